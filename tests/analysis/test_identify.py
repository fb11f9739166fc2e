import numpy as np
import pandas as pd

from analysis.identify import (
    check_design,
    check_draws,
    check_fit,
    condition,
    design_words,
    interval_ok,
    next_level,
)


def grid(sizes, budgets) -> pd.DataFrame:
    return pd.DataFrame([(n, d) for n in sizes for d in budgets], columns=["N", "D"])


def test_three_by_two_is_refused_with_a_third_budget_to_add():
    ident = check_design(grid((1e5, 3e5, 1e6), (3.2e4, 6.5e4)), 5, ("N", "D"), "dense/code")
    assert not ident.ok
    assert ident.line.startswith("not identified: 6 runs (3 sizes x 2 budgets) for 5 parameters")
    assert "add a third token budget (for example 1.3e+05)" in ident.line


def test_design_words_say_grid_only_for_a_full_grid():
    g = grid((1e5, 3e5, 1e6), (3.2e4, 6.5e4))
    assert design_words(g, ("N", "D")) == "6 runs (3 sizes x 2 budgets)"
    assert design_words(pd.concat([g, g]), ("N", "D")) == "12 runs (3 sizes x 2 budgets, 2 each)"
    diagonal = pd.DataFrame({"N": [1e5, 3e5, 1e6], "D": [3.2e4, 6.5e4, 1.3e5]})
    assert design_words(diagonal, ("N", "D")) == "3 runs (at 3 sizes and 3 budgets)"


def test_sizes_a_router_apart_are_one_level():
    """A MoE's active params exceed its dense partner's by its router (1% at d = 32, 4
    experts): the demo's dense and MoE runs at 3 widths are 3 sizes, not 6, in words and to the
    gate, which two near-equal sizes do not satisfy."""
    dense, moe = (2.525e4, 5.2e4, 1.007e5), (2.55e4, 5.25e4, 1.012e5)
    df = pd.DataFrame({"N": dense + moe, "E": [1] * 3 + [4] * 3})
    assert design_words(df, ("E", "N")) == "6 runs (2 expert counts x 3 sizes)"
    near = grid((1e5, 1.02e5, 3e5), (1e6, 3e6, 1e7))
    ident = check_design(pd.concat([near, grid((1e6,), (1e6, 3e6, 1e7))]), 5, ("N", "D"), "x",
                         min_resid_df=0)
    assert ident.ok  # 1e5 (and 1.02e5), 3e5, 1e6: three sizes
    ident = check_design(near, 5, ("N", "D"), "x", min_resid_df=0)
    assert not ident.ok and "2 sizes" in ident.reason


def test_four_by_three_is_accepted_and_three_by_three_refused():
    df = grid((1e5, 3e5, 1e6, 3e6), (3.2e4, 6.5e4, 1.3e5))
    assert check_design(df, 5, ("N", "D"), "x").ok
    short = check_design(df[df["N"] < 2e6], 5, ("N", "D"), "x")
    assert not short.ok and "9 runs (3 sizes x 3 budgets)" in short.reason
    assert "add 3 or more runs" in short.suggestion
    assert check_design(df[df["N"] < 2e6], 5, ("N", "D"), "x", min_resid_df=4).ok


def test_a_linear_variable_needs_two_levels_only():
    df = pd.DataFrame({"N": np.repeat([1e5, 3e5, 1e6, 3e6], 3), "E": np.tile([1, 8, 16], 4)})
    assert check_design(df, 6, ("E",), "routed", linear=("N",), min_resid_df=6).ok
    one = check_design(df[df["N"] == 1e5], 6, ("E",), "routed", linear=("N",))
    assert not one.ok and "a second size" in one.suggestion


def test_several_missing_levels_name_one_value_each_in_words():
    one_size = grid((1e5,), (2.5e5, 5e5, 1e6))
    ident = check_design(one_size, 5, ("N", "D"), "x")
    assert "add 2 more sizes (for example 2e+05 and 4e+05)" in ident.line
    g = pd.DataFrame({"N": np.repeat([1e5, 3e5, 1e6], 3), "D": np.tile([1e6, 3e6, 1e7], 3),
                      "granularity": 1.0})
    refused = check_design(g, 7, ("N", "D", "granularity"), "granularity")
    assert "add 2 more granularities (for example 2 and 4)" in refused.line


def test_next_level_steps_geometrically_beyond_the_largest():
    assert next_level(np.array([1e5, 2e5, 4e5])) == 8e5
    assert next_level(np.array([8.0]), integer=True) == 16.0


def test_condition_flags_a_flat_direction():
    x = np.linspace(0, 1, 9)
    good = np.column_stack([np.ones_like(x), x, x**2])
    assert condition(good) < 100 and check_fit(good, ["a", "b", "c"]).ok
    flat = np.column_stack([np.ones_like(x), x, x + 1e-9 * x**2])
    bad = check_fit(flat, ["a", "b", "c"])
    assert not bad.ok and "ill conditioned" in bad.reason
    assert not check_fit(good, ["a", "b", "c"], at_edge=["alpha"]).ok


def test_identical_bootstrap_draws_are_degenerate():
    est = np.array([1.0, 2.0])
    assert not check_draws(np.tile(est + 0.1, (50, 1)), est, ["a", "b"]).ok
    rng = np.random.default_rng(0)
    assert check_draws(est + rng.normal(0, 0.1, (50, 2)), est, ["a", "b"]).ok


def test_interval_ok_needs_width_and_the_estimate():
    ok = interval_ok([1.0, 1.0, 1.0, 1.0], [0.5, 1.0, 1.1, 0.5], [1.5, 1.0, 1.2, np.inf])
    assert ok.tolist() == [True, False, False, True]


def test_report_on_a_three_by_two_design_prints_what_to_add_and_no_estimate(tmp_path):
    """The demo's design: 3 sizes x 2 token budgets per family. No Chinchilla estimate,
    interval or verdict is printed; each group gets one line with the budget to add."""
    import json

    from analysis.report import write_report
    from analysis.synthetic import chinchilla_law, record

    rng = np.random.default_rng(0)
    truth = {"E": 1.2, "A": 300.0, "B": 200.0, "alpha": 0.35, "beta": 0.30}
    for k, (N, D) in enumerate((n, d) for n in (1e5, 3e5, 1e6) for d in (3.2e4, 6.5e4)):
        for family, shift in (("dense", 0.0), ("moe", -0.03)):
            loss = float(chinchilla_law(N, D, truth)) * np.exp(rng.normal(0, 0.005)) + shift
            rec = record(f"{family}-{k}", family, ["text"], int(N), {"text": int(D)},
                         {"text": loss}, n_experts=8 if family == "moe" else 0, router="learned",
                         pair_id=f"p{k}")
            d = tmp_path / "runs" / rec["run_id"]
            d.mkdir(parents=True)
            (d / "record.json").write_text(json.dumps(rec))
    text = write_report([tmp_path / "runs"], tmp_path / "out", bootstrap=20).read_text()
    gaps = [line for line in text.splitlines()
            if line.startswith(("- group (family=", "- 2 groups, group (family="))]
    # one line per reason, naming every group it holds: here both families share it
    assert len(gaps) == 1 and "2 groups" in gaps[0], text
    assert "family=dense" in gaps[0] and "family=moe" in gaps[0]
    for line in gaps:
        assert "not identified: 6 runs (3 sizes x 2 budgets) for 5 parameters" in line
        assert "add a third token budget (for example 1.3e+05)" in line
    assert "| E " not in text and "competition barrier" not in text
    assert "experts worth" not in text
    # no law-based leverage and no bank: a sentence, no empty table, no empty CSV to link to
    assert "No rows: the runs support none" in text
    assert not (tmp_path / "out" / "law_bank.csv").exists()
    assert "[law_bank.csv]" not in text


SMALL_GRID_ARGS = dict(alpha=(0.0, 1.0, 2.0), beta=(0.0, 1.0, 2.0), e=(-1.0, 0.0, 1.0),
                       a=(0.0, 10.0, 25.0), b=(0.0, 10.0, 25.0))
TRUTH = {"E": 1.2, "A": 300.0, "B": 200.0, "alpha": 0.35, "beta": 0.30}


def _chinchilla_grid(sizes, budgets, seed: int, noise: float = 0.01) -> pd.DataFrame:
    from analysis.synthetic import chinchilla_law

    df = grid(sizes, budgets)
    rng = np.random.default_rng(seed)
    return df.assign(loss=chinchilla_law(df["N"], df["D"], TRUTH) * np.exp(rng.normal(0, noise, len(df))))


def test_chinchilla_just_above_its_threshold_prints_intervals_that_hold_their_estimates():
    from analysis.chinchilla import Grid, fit_chinchilla

    for seed in range(3):
        df = _chinchilla_grid((1e5, 3e5, 1e6, 3e6), (2e6, 6e6, 2e7), seed)
        r = fit_chinchilla(df, bootstrap=100, seed=seed, grid=Grid(**SMALL_GRID_ARGS), workers=1)
        ci = r.conf_int()
        assert interval_ok(r.params, ci["lower"], ci["upper"]).all(), ci
        p = r.predict_interval([5e5], [6e6])
        co = r.compute_optimal([6 * 5e5 * 6e6])
        assert interval_ok(p["loss"], p["lower"], p["upper"]).all()
        assert interval_ok(co["N_opt"], co["N_opt_lower"], co["N_opt_upper"]).all()


def test_chinchilla_refuses_three_by_three_and_three_by_two():
    import pytest

    from analysis.chinchilla import Grid, fit_chinchilla
    from analysis.identify import NotIdentified

    for budgets in ((2e6, 6e6, 2e7), (3.2e4, 6.5e4)):
        with pytest.raises(NotIdentified, match="not identified: .* for 5 parameters; .*add"):
            fit_chinchilla(_chinchilla_grid((1e5, 3e5, 1e6), budgets, 0), bootstrap=10,
                           grid=Grid(**SMALL_GRID_ARGS), workers=1)


def test_bimodal_just_above_and_below_its_threshold():
    import pytest

    from analysis.bimodal import fit_bimodal
    from analysis.chinchilla import Grid
    from analysis.identify import NotIdentified
    from analysis.synthetic import bimodal_runs

    uni = {"text": TRUTH, "dna": {"E": 1.3, "A": 150.0, "B": 400.0, "alpha": 0.30, "beta": 0.32}}
    q = {"C": 0.5, "A": 40.0, "alpha": 0.3, "B": 5.0, "beta": 0.2}
    group = {"family": "dense", "pair": "text+dna"}
    design = [(N, D) for N in (1e5, 1e6, 1e7) for D in (4e6, 4e7, 1.2e8)]
    r = fit_bimodal(bimodal_runs(uni, q, design, 0.002, 0), group, 100, 0,
                    Grid(**SMALL_GRID_ARGS), workers=1)
    p = r.points
    assert interval_ok(p["interaction_fitted"], p["lower"], p["upper"]).all()
    ci = r.conf_int()
    assert interval_ok(r.params, ci["lower"], ci["upper"]).all()  # unbounded sides count
    small = [(N, D) for N in (1e5, 1e6, 1e7) for D in (4e6, 4e7)]
    with pytest.raises(NotIdentified, match=r"6 runs \(3 sizes x 2 budgets\).*add a third"):
        fit_bimodal(bimodal_runs(uni, q, small, 0.002, 0), group, 10, 0, Grid(**SMALL_GRID_ARGS),
                    workers=1)


def test_routed_just_above_and_below_its_threshold():
    import pytest

    from analysis.identify import NotIdentified
    from analysis.routed import fit_routed
    from analysis.synthetic import routed_points

    t = {"a": -0.08, "b": -0.05, "c": 0.004, "d": 1.9, "E_start": 1.9, "E_max": 300.0}
    r = fit_routed(routed_points(t, (1e6, 1e7, 1e8), (1, 4, 16, 64), 0.003, 0), {"modality": "x"}, 100)
    ci = r.conf_int()
    assert interval_ok(r.params, ci["lower"], ci["upper"]).all()
    g = r.gain([3e6], [64])
    assert interval_ok(g["ratio"], g["lower"], g["upper"]).all()
    with pytest.raises(NotIdentified, match=r"2 expert counts.*add a third expert count"):
        fit_routed(routed_points(t, (1e6, 3e6, 1e7, 1e8), (1, 16), 0.003, 0), {"modality": "x"}, 10)


def test_bimodal_law_of_an_moe_family_is_fitted_against_its_own_unimodal_runs():
    """bimodal_jobs gives an MoE family its own unimodal runs; the fit must use them (it looked
    for dense ones and failed for every MoE family)."""
    from analysis.bimodal import bimodal_jobs, fit_bimodal
    from analysis.chinchilla import Grid
    from analysis.synthetic import bimodal_runs

    uni = {"text": TRUTH, "dna": {"E": 1.3, "A": 150.0, "B": 400.0, "alpha": 0.30, "beta": 0.32}}
    q = {"C": 0.5, "A": 40.0, "alpha": 0.3, "B": 5.0, "beta": 0.2}
    design = [(N, D) for N in (1e5, 1e6, 1e7) for D in (4e6, 4e7, 1.2e8)]
    df = bimodal_runs(uni, q, design, 0.002, 0).assign(
        family="moe", router="modality", n_experts=2, top_k=1)
    [(group, rows)] = bimodal_jobs(df)
    assert group["family"] == "moe modality E=2"
    r = fit_bimodal(rows, group, 30, 0, Grid(**SMALL_GRID_ARGS), workers=1)
    assert r.group["family"] == "moe modality E=2" and len(r.points) == 9
