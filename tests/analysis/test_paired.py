"""The paired difference: a pair's document-level SE, and pairs combined by a design model."""

import json
import warnings

import numpy as np
import pytest

from analysis.compare import compare_pairs
from analysis.errors import AnalysisError
from analysis.paired import DocLosses, combine, pair_difference
from analysis.records import load_docs, load_runs
from analysis.synthetic import record


def _docs(rng, n_docs=200, shift=0.0, noise=0.02):
    """Two runs on the same documents: per-token difficulty varies a lot between documents
    (SD 0.5 nats), the second run is `shift` nats/token worse plus per-document noise."""
    tokens = rng.integers(50, 400, n_docs)
    hard = 3.0 + rng.normal(0, 0.5, n_docs)
    other = hard + shift + rng.normal(0, noise, n_docs)
    return DocLosses(other * tokens, tokens), DocLosses(hard * tokens, tokens)


def test_pair_difference_by_hand():
    a = DocLosses(np.array([11.0, 5.0]), np.array([4, 2]))
    b = DocLosses(np.array([10.0, 4.0]), np.array([4, 2]))
    dl, se = pair_difference(a, b)
    assert dl == pytest.approx(2 / 6)  # (1 + 1) nats over 6 tokens
    # ratio-estimator SE: r/(r-1) sum (d_i - dl n_i)^2 / n^2 = 2 (1/9 + 1/9) / 36
    assert se == pytest.approx(np.sqrt(2 * (2 / 9) / 36))
    with pytest.raises(AnalysisError, match="different validation documents"):
        pair_difference(a, DocLosses(np.array([1.0, 1.0, 1.0]), np.array([4, 2, 1])))


def test_pair_se_matches_the_spread_of_the_difference_and_cancels_document_difficulty():
    rng = np.random.default_rng(0)
    draws = [pair_difference(*_docs(rng, shift=-0.05)) for _ in range(400)]
    dl, se = np.array(draws).T
    assert dl.mean() == pytest.approx(-0.05, abs=0.001)
    assert np.median(se) == pytest.approx(dl.std(), rel=0.15)
    # each loss alone has an SE set by the documents' difficulty, 20x the paired one
    other, dense = _docs(rng)
    s, n = dense.nll_sum, dense.tokens
    lone = np.sqrt(len(n) / (len(n) - 1) * np.sum((s - s.sum() / n.sum() * n) ** 2)) / n.sum()
    assert lone > 10 * pair_difference(other, dense)[1]


def test_combine_covers_the_centre_of_a_design_with_a_slope_and_seed_scatter():
    """Pairs at 3 sizes x 2 budgets x 2 seeds: dL = -0.03 at the centre, a slope in log N, a
    between-pair SD of 0.01 beyond each pair's document SE. The 95% interval covers the centre's
    truth 90-99% of the time; the fixed-effect interval (document SEs alone) would not."""
    rng = np.random.default_rng(1)
    N = np.repeat([1e6, 4e6, 1.6e7], 4)
    D = np.tile(np.repeat([2e7, 8e7], 2), 3)
    lN = np.log(N) - np.log(N).mean()
    covered, fixed_covered = [], []
    for _ in range(400):
        se = rng.uniform(0.002, 0.006, len(N))
        dl = -0.03 + 0.01 * lN + rng.normal(0, 0.01, len(N)) + rng.normal(0, se)
        c = combine(dl, se, N, D)
        assert c.lower < c.dL < c.upper and c.df == len(N) - 3
        covered.append(c.lower <= -0.03 <= c.upper)
        w = 1 / se**2  # the fixed-effect SE of the intercept, ignoring the seed scatter
        fixed_covered.append(abs(c.dL + 0.03) <= 1.96 / np.sqrt(w.sum()))
    assert 0.90 <= np.mean(covered) <= 0.99
    assert np.mean(fixed_covered) < 0.8


def test_combine_small_cases_say_what_they_rest_on():
    one = combine([-0.02], [0.005], [1e6], [1e7])
    assert one.lower < -0.02 < one.upper < 0 and "one pair" in one.model
    bare = combine([-0.02], [np.nan], [1e6], [1e7])
    assert np.isnan(bare.se) and "no standard error" in bare.model
    ols = combine([-0.02, -0.03, -0.025], [np.nan] * 3, [1e6, 2e6, 4e6], [1e7] * 3)
    assert ols.df == 2 and "OLS" in ols.model and ols.lower < ols.dL < ols.upper


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Dense, learned-router and modality-router runs at 3 sizes x 2 budgets x 2 seeds, with
    per-document losses: the learned router 0.04 nats/token better on text, equal on dna; the
    modality router equal on both."""
    root = tmp_path_factory.mktemp("paired_docs")
    rng = np.random.default_rng(2)
    shift = {("learned", "text"): -0.04, ("learned", "dna"): 0.0, ("modality", "text"): 0.0,
             ("modality", "dna"): 0.0}
    k = 0
    for N in (1e5, 4e5, 1.6e6):
        for D in (4e6, 1.6e7):
            for seed in range(2):
                base = {m: _docs(rng, 120)[1] for m in ("text", "dna")}
                runs = {"dense": (None, 0, base)}
                for router, experts in (("learned", 8), ("modality", 2)):
                    runs[router] = (router, experts, {
                        m: DocLosses(d.nll_sum + (shift[router, m] + rng.normal(0, 0.003)
                                                  + rng.normal(0, 0.03, len(d.tokens))) * d.tokens,
                                     d.tokens) for m, d in base.items()})
                for name, (router, experts, docs) in runs.items():
                    run = f"{name}-{k}"
                    losses = {m: float(d.nll_sum.sum() / d.tokens.sum()) for m, d in docs.items()}
                    rec = record(run, "dense" if router is None else "moe", list(docs), int(N),
                                 {m: int(D) for m in docs}, losses, seed=seed, n_experts=experts,
                                 router=router, pair_id=f"p{k}")
                    (root / run).mkdir()
                    (root / run / "record.json").write_text(json.dumps(rec))
                    (root / run / "eval_docs.json").write_text(json.dumps(
                        {m: {"nll_sum": d.nll_sum.tolist(), "tokens": d.tokens.tolist()}
                         for m, d in docs.items()}))
                k += 1
    return root


def test_compare_pairs_reads_eval_docs_and_holds_one_policy(runs):
    df, _ = load_runs([runs])
    docs = load_docs([runs])
    assert set(docs) == set(df["run"])
    t = compare_pairs(df, docs=docs).set_index(["family", "modality"])
    assert len(t) == 4 and (t["pairs with document SE"] == 12).all()
    assert t.loc[("moe learned E=8", "text"), "verdict"] == "moe learned E=8 better"
    assert t.loc[("moe learned E=8", "text"), "dL"] == pytest.approx(-0.04, abs=0.01)
    assert (t.drop(("moe learned E=8", "text"))["verdict"] == "no significant difference").all()
    # Holm over every row of the table, not within a family
    assert (t["p_holm"] >= t["p"]).all()
    assert t["p_holm"].min() == pytest.approx(min(1.0, 4 * t["p"].min()))
    # without the documents the same pairs are still combined, by OLS on the design
    bare = compare_pairs(df).set_index(["family", "modality"])
    assert bare["model"].str.startswith("OLS").all() and (bare["se"] > 0).all()


def test_primary_table_one_answer_per_family_and_modality(runs):
    from analysis.chinchilla import Grid
    from analysis.headline import headline, primary, primary_text

    df, records = load_runs([runs])
    paired = compare_pairs(df, docs=load_docs([runs]))
    small = Grid(alpha=(0.3,), beta=(0.3,), e=(0.0,), a=(5.0,), b=(5.0,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = headline(df, bootstrap=30, grid=small)
    t = primary(paired, h, df)
    assert sorted(zip(t["family"], t["modality"], strict=True)) == sorted(
        (f, m) for f in ("moe learned E=8", "moe modality E=2") for m in ("dna", "text"))
    assert "margin under floors" not in t  # the records carry no floors
    win = t[(t["family"] == "moe learned E=8") & (t["modality"] == "text")].iloc[0]
    assert win["verdict"] == "moe learned E=8 better" and win["dL SE"] > 0
    # 3 sizes x 2 budgets do not identify a Chinchilla law: the leverage comes from the runs
    assert not t["EL from"].str.startswith("laws").any()
    shown = t[np.isfinite(t["EL"])]
    assert ((shown["EL lower"] <= shown["EL"]) & (shown["EL"] <= shown["EL upper"])).all()
    assert "Holm" in primary_text(t) and "4 tested" in primary_text(t)
    floors = {(r["run_id"], m): 3.1 for r in records for m in r["eval"]["final"]}
    with_floor = primary(paired, None, df, floors)
    best = df[(df["modality"] == "text") & (df["run"].str.startswith("learned"))]["loss"].min()
    row = with_floor[(with_floor["family"] == "moe learned E=8") & (with_floor["modality"] == "text")]
    assert row["margin under floors"].iloc[0] == pytest.approx(3.1 - best)
    assert with_floor["EL from"].str.startswith("none").all()


def test_primary_leverage_is_law_free_where_the_laws_are_not_identified():
    """Dense and MoE worth 1.5x its compute at 4 sizes x 2 budgets: no Chinchilla law is
    identified (two budgets), so the primary EL is the runs' own, with an interval that holds it."""
    from analysis.headline import headline, primary
    from analysis.synthetic_moe import leverage_runs

    df = leverage_runs({"text": 1.5}, seed=4, sizes=(1e6, 2e6, 4e6, 8e6), tokens=(2e7, 2e8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = headline(df, bootstrap=200)
    assert h.leverage.empty  # nothing law-based is printed
    (row,) = primary(None, h, df).to_dict("records")
    assert row["EL from"].startswith("runs alone") and row["verdict"] == "no matched pairs: no verdict"
    assert row["EL lower"] < 1.5 < row["EL upper"] and row["EL lower"] <= row["EL"] <= row["EL upper"]
