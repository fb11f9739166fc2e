"""The demo's plan checks its own design: it scales the token budgets to the time it has, drops
the learned router before it would run a design that does not identify the headline, and refuses
when even that does not fit."""

from __future__ import annotations

import pytest

from moe_vs_dense import demo
from moe_vs_dense.errors import UserError
from moe_vs_dense.sweep.plan import expand
from moe_vs_dense.sweep.spec import load_sweep


@pytest.fixture(scope="module")
def sweep_base():
    return load_sweep(demo.SWEEP)


def _seconds(sweep, base) -> dict[str, float]:
    """1 s per 100k tokens at scale 1, MoE 25% slower: a stand-in for `estimate`'s timing."""
    return {r.run_id: r.tokens / 1e5 * (1.25 if r.family != "dense" else 1.0)
            for r in expand(sweep, base, str(demo.SWEEP))}


def test_the_demo_design_identifies_its_headline(sweep_base):
    sweep, base = sweep_base
    assert demo.design_problems(expand(sweep, base, str(demo.SWEEP))) == []


@pytest.mark.parametrize("change, problem", [
    ({"sizes": "two"}, "2 model sizes; a law needs 3"),
    ({"tokens": [400000, 1600000]}, "2 distinct token budgets; a law needs 3"),
    ({"tokens": [400000, 800000, 1600000]}, "9 runs; a 5-parameter law needs 12"),
    ({"tokens": [100000, 800000, 1600000]}, "the shortest run takes 25 optimizer steps"),
    ({"tokens": [300000, 500000, 700000]}, "the longest run takes 171 optimizer steps"),
    ({"families": "dense only"}, "the headline compares dense with at least one MoE family"),
])
def test_design_problems_name_what_is_missing(sweep_base, change, problem):
    sweep, base = sweep_base
    update = dict(change)
    if update.get("sizes") == "two":
        update["sizes"] = sweep.sizes[:2]
    if update.get("families") == "dense only":
        update["families"] = {"dense": sweep.families["dense"]}
    problems = demo.design_problems(expand(sweep.model_copy(update=update), base, str(demo.SWEEP)))
    assert any(problem in p for p in problems), problems


def test_plenty_of_time_keeps_every_family_at_a_capped_scale(sweep_base):
    sweep, base = sweep_base
    chosen, runs, scale = demo.pick(sweep, base, _seconds(sweep, base), 1.0, 1e6, 2, log=lambda m: None)
    assert scale == demo.MAX_SCALE and set(chosen.families) == set(sweep.families)
    assert demo.design_problems(runs) == []


def test_short_time_drops_the_learned_router_before_the_design(sweep_base):
    sweep, base = sweep_base
    seconds = _seconds(sweep, base)
    lines: list[str] = []
    # enough for dense + modality experts at about x0.8, not for all three families at x0.6
    budget = 0.8 * sum(seconds[r.run_id] for r in expand(sweep, base, str(demo.SWEEP))
                       if r.family != "moe_learned") * demo.PACKING / 2 + 60
    chosen, runs, scale = demo.pick(sweep, base, seconds, 1.0, budget, 2, log=lines.append)
    assert set(chosen.families) == {"dense", "moe_modality"}
    assert demo.design_problems(runs) == [] and 0.6 < scale < 1.0
    assert any("too little time for moe_learned" in line for line in lines)
    # the plan trains within its budget (the same arithmetic the demo uses)
    nominal = expand(demo.scaled(sweep, 1.0, list(chosen.families)), base, str(demo.SWEEP))
    assert demo._plan_seconds(nominal, seconds, scale, 2) <= budget


def test_too_little_time_is_refused_with_what_would_not_be_identified(sweep_base):
    sweep, base = sweep_base
    with pytest.raises(UserError, match=r"too short .*raise --minutes[\s\S]*optimizer steps"):
        demo.pick(sweep, base, _seconds(sweep, base), 1.0, 60.0, 2, log=lambda m: None)
