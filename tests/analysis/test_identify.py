import numpy as np
import pandas as pd

from analysis.identify import (
    check_design,
    check_draws,
    check_fit,
    condition,
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


def test_three_by_three_is_accepted_and_eight_of_it_refused():
    df = grid((1e5, 3e5, 1e6), (3.2e4, 6.5e4, 1.3e5))
    assert check_design(df, 5, ("N", "D"), "x").ok
    short = check_design(df.iloc[:8], 5, ("N", "D"), "x")
    assert not short.ok and "8 runs" in short.reason and "add 1 or more runs" in short.suggestion


def test_a_linear_variable_needs_two_levels_only():
    df = pd.DataFrame({"N": np.repeat([1e5, 3e5, 1e6, 3e6], 3), "E": np.tile([1, 8, 16], 4)})
    assert check_design(df, 6, ("E",), "routed", linear=("N",)).ok
    one = check_design(df[df["N"] == 1e5], 6, ("E",), "routed", linear=("N",))
    assert not one.ok and "a second size" in one.suggestion


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
