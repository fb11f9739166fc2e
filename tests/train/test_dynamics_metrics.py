"""A tiny real run evaluated at every step: what metrics.jsonl keeps for the training-dynamics
analysis (analysis/dynamics.py), and that the analysis reads it as the trainer meant it."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis.dynamics import find_curves, section, spike_steps
from analysis.paired import DocLosses, pair_difference
from analysis.records import load_runs
from moe_vs_dense.train import train
from tests.train.conftest import tiny

EVERY_STEP = ["train.tokens=20480", "eval.every=1", "run.log_every=1", "run.spike_sigma=1.0",
              "run.spike_window=4", "run.checkpoint_every=10"]


@pytest.mark.slow
def test_eval_lines_give_paired_changes_and_spikes_match_the_trainer(tmp_path, demo_data):
    runs = tmp_path / "runs"
    recs = [train(tiny(*EVERY_STEP), runs / "dense", data_root=demo_data, progress=False),
            train(tiny(*EVERY_STEP, moe=True), runs / "moe", data_root=demo_data, progress=False)]
    lines = [json.loads(x) for x in (runs / "dense" / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if "eval" in x]
    assert [e["step"] for e in evals] == list(range(1, 21))
    for a, b in zip(evals[:-1], evals[1:], strict=True):
        for m, loss in b["eval"].items():
            tok = np.asarray(b["doc_tokens"][m])
            assert tok.tolist() == a["doc_tokens"][m]  # the same rows at every eval
            assert sum(b["docs"][m]) / tok.sum() == pytest.approx(loss)
            dl, _ = pair_difference(DocLosses(np.asarray(b["docs"][m]), tok),
                                    DocLosses(np.asarray(a["docs"][m]), tok))
            assert dl == pytest.approx(loss - a["eval"][m])
            assert b["se"][m] is None or b["se"][m] > 0
    # the analysis' spike rule on the logged per-step grad norms is the trainer's own count
    per_step = pd.DataFrame([x for x in lines if "grad_norm" in x])
    assert per_step["step"].tolist() == list(range(1, 21))
    found = spike_steps(per_step["step"].to_numpy(), per_step["grad_norm"].to_numpy(), 1.0, 4)
    assert len(found) == recs[0]["stability"]["grad_norm_spikes"] > 0
    # the section reads both runs (19 evals after a 1-step warmup) and plots the pair
    df, records = load_runs([runs])
    curves = find_curves([runs], records)
    assert [c.run for c in curves] == ["dense", "moe"] and curves[0].warmup == 1
    out = tmp_path / "report"
    out.mkdir()
    text, figs = section(df, records, out, [runs])
    assert "## Training dynamics" in "\n".join(text) and [f.name for f in figs] == ["dynamics_tiny.png"]
    alt = pd.read_csv(out / "dynamics_alternation.csv")
    assert len(alt) == 2 * 15 and set(alt["intervals"]) == {18}  # 6 modalities: 15 pairs per run
