"""The demo end to end on real data with a tiny budget (its step minimums lowered, since two
minutes cannot train a design that identifies the headline): a report with every demo modality,
both families, finite intervals, floors, routing heatmaps, figures and the competition study's
link, and a rerun that trains nothing; with the real minimums, a refusal."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from analysis.answer import at_unigram
from moe_vs_dense import demo as demo_module
from moe_vs_dense.demo import demo, plan
from moe_vs_dense.errors import UserError
from moe_vs_dense.sweep.state import run_state

pytestmark = pytest.mark.slow


def _section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_tiny_demo_report(tmp_path, demo_data, monkeypatch):
    monkeypatch.setattr(demo_module, "MIN_STEPS", 2)
    monkeypatch.setattr(demo_module, "MIN_LARGEST_STEPS", 4)
    lines: list[str] = []
    report = demo(tmp_path / "demo", minutes=2.0, bootstrap=20, log=lines.append)
    text = report.read_text()
    assert any("token budgets x" in line for line in lines)  # the plan was printed first
    floors = _section(text, "## Floors")
    assert all(f"| {f} " in floors for f in ("dense", "moe modality E=2", "moe learned E=4"))
    assert "| text " in floors and "| image " in floors
    # every (run, modality) not beating its unigram floor by more than its SE is counted in the
    # notes and kept out of the fits; pairs that remain are compared with intervals that hold
    # their estimate
    runs_csv = pd.read_csv(report.parent / "runs.csv")
    stuck = int(at_unigram(runs_csv).sum())
    assert runs_csv["floor_unigram"].notna().all()
    assert (f"floors: {stuck} (run, modality) rows do not beat" in text) == (stuck > 0)
    if stuck == len(runs_csv):
        assert "nothing to fit" in text
    if "## MoE/MoT minus dense on matched pairs" in text:
        pairs = _section(text, "## MoE/MoT minus dense on matched pairs")
        lines_ = pairs.splitlines()
        header = [c.strip() for c in lines_[next(
            i for i, r in enumerate(lines_) if r.startswith("| family"))].split("|")]
        for r in (r for r in lines_ if r.startswith("|") and "moe" in r):
            cells = dict(zip(header, [c.strip() for c in r.split("|")], strict=True))
            if re.fullmatch(r"-?\d.*", cells["lower"]) and re.fullmatch(r"-?\d.*", cells["upper"]):
                assert float(cells["lower"]) <= float(cells["dL"]) <= float(cells["upper"])
    assert "## Does a learned router separate modalities?" in text
    figures = re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", text)
    assert any(f.startswith("expert_use_") for f in figures)
    assert all((report.parent / f).is_file() for f in figures)
    link = re.search(r"\[configs/studies/competition.yaml\]\(([^)]+)\)", text).group(1)
    assert (report.parent / link).resolve().is_file()
    # a second call plans the same runs (saved scale, no new timing), all of them done
    lines.clear()
    runs, _ = plan(tmp_path / "demo", 2.0, None, 2, 0.0, log=lines.append)
    assert any("the plan of the earlier run" in line for line in lines)
    assert all(run_state(tmp_path / "demo", r.run_id)[0] == "done" for r in runs)


def test_too_short_a_demo_refuses_and_says_why(tmp_path, demo_data):
    with pytest.raises(UserError, match=r"raise --minutes\)[\s\S]*dense \+ moe_modality at token budgets"):
        demo(tmp_path / "demo", minutes=1.5, bootstrap=20, log=lambda m: None)
