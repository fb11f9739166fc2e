"""The alternation measure on synthetic curves with a known answer, metrics.jsonl reading, and
the report section's detection."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis.dynamics import MIN_EVALS, _corr, alternation, pool_seeds, read_metrics, section
from analysis.errors import AnalysisError
from analysis.synthetic import record

STEPS = np.arange(8, 8 * 62, 8)  # 61 evals, every 8 steps, as configs/studies/dynamics.yaml
TOKENS = np.array([300, 500, 200])  # tokens of the validation documents of a synthetic eval


def decay(rng, E, A, a, sd, ar=0.0):
    """A power-law loss curve with iid (ar=0) or AR(1) noise: training noise that wanders."""
    e = rng.normal(0, sd, len(STEPS))
    for i in range(1, len(e)):
        e[i] += ar * e[i - 1]
    return E + A * STEPS ** -a + e


def staircases(rng, period=4, drop=0.02, sd=0.002):
    """Two curves on a shared decay that take turns to drop: a in even blocks, b in odd ones."""
    base = 8.0 * STEPS ** -0.5
    phase = (np.arange(len(STEPS)) // period) % 2
    a = 2 + base - np.cumsum(np.where(phase == 0, drop, 0.0)) + rng.normal(0, sd, len(STEPS))
    b = 1 + base - np.cumsum(np.where(phase == 1, drop, 0.0)) + rng.normal(0, sd, len(STEPS))
    return a, b


@pytest.mark.parametrize("seed", range(5))
def test_alternating_step_curves_are_strongly_negative_and_reject_independence(seed):
    a, b = staircases(np.random.default_rng(seed))
    x = alternation(STEPS, a, b)
    assert x.r < -0.7
    assert x.lower <= x.r <= x.upper < 0
    assert x.p < 0.05


def test_common_shocks_read_positive_not_alternation():
    """Both modalities set back by the same bad steps: a positive correlation, so the measure's
    sign is not forced by the detrending."""
    rng = np.random.default_rng(3)
    shock = np.cumsum(rng.normal(0, 0.01, len(STEPS)))
    x = alternation(STEPS, decay(rng, 2, 8, 0.5, 0.002) + shock, decay(rng, 1, 5, 0.7, 0.002) + shock)
    assert x.r > 0.7 and 0 < x.lower <= x.r and x.p < 0.05


@pytest.mark.parametrize("ar", [0.0, 0.7])
def test_independent_decays_cover_zero_at_the_nominal_rate(ar):
    """Independent noisy decays: the 95% interval covers the true 0 in 0.90-0.99 of 200 trials,
    the null rejects about 5% of them (exactly where the interval excludes 0), and r averages 0;
    the raw improvements, which both fall fastest early, would correlate positively (what the
    detrending removes)."""
    cover = reject = 0
    rs, raw, agree = [], [], []
    for t in range(200):
        rng = np.random.default_rng(1000 + t)
        a, b = decay(rng, 2.0, 8.0, 0.5, 0.01, ar), decay(rng, 1.0, 5.0, 0.7, 0.01, ar)
        x = alternation(STEPS, a, b)
        cover += x.lower <= 0 <= x.upper
        reject += x.p < 0.05
        agree.append((x.lower <= 0 <= x.upper) == (x.p >= 0.05))
        rs.append(x.r)
        raw.append(_corr(-np.diff(a), -np.diff(b)))
    assert 0.90 <= cover / 200 <= 0.99
    assert reject / 200 <= 0.09
    assert all(agree)  # the interval excludes 0 exactly when the null is rejected
    assert abs(np.mean(rs)) < 0.05
    assert np.mean(raw) > 0.2


def test_too_few_evals_are_refused():
    with pytest.raises(AnalysisError, match=f"at least {MIN_EVALS} evals"):
        alternation(STEPS[:5], STEPS[:5] ** -0.5, STEPS[:5] ** -0.3)


def test_read_metrics_names_the_bad_line_and_skips_a_cut_last_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "loss": 3.0, "grad_norm": 1.0, "loss_spikes": 0, "grad_norm_spikes": 0},
             {"step": 1, "eval": {"text": 3.1, "code": 3.2}}]
    p.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 2, "lo')
    evals, steps = read_metrics(p)
    assert [e["step"] for e in evals] == [1] and steps["grad_norm"].tolist() == [1.0]
    p.write_text(json.dumps(lines[0]) + "\nnot json\n" + json.dumps(lines[1]) + "\n")
    with pytest.raises(AnalysisError, match=r"metrics.jsonl:2: not a JSON line"):
        read_metrics(p)


def _run(root, run_id, evals: int, family="dense"):
    """A run directory: a record and a metrics.jsonl with `evals` eval lines of text and code."""
    rec = record(run_id, family, ["text", "code"], 10_000, {"text": 50_000, "code": 50_000},
                 {"text": 2.5, "code": 2.8}, pair_id="p0", router="modality" if family == "moe" else None)
    d = root / run_id
    d.mkdir(parents=True)
    (d / "record.json").write_text(json.dumps(rec))
    rng = np.random.default_rng(len(run_id))
    with open(d / "metrics.jsonl", "w") as f:
        for k, s in enumerate(STEPS[:evals]):
            f.write(json.dumps({"step": int(s), "loss": 3.0, "grad_norm": 1.0, "loss_spikes": 0,
                                "grad_norm_spikes": int(k > 30)}) + "\n")
            loss = {"text": 2 + 8 * s ** -0.5, "code": 2 + 6 * s ** -0.4}
            docs = {m: (v + rng.normal(0, 0.01, 3)) * TOKENS for m, v in loss.items()}
            f.write(json.dumps({"step": int(s), "eval": {m: d.sum() / TOKENS.sum() for m, d in docs.items()},
                                "docs": {m: d.tolist() for m, d in docs.items()},
                                "doc_tokens": {m: TOKENS.tolist() for m in docs}}) + "\n")
    return rec


def test_section_is_empty_without_frequent_evals(tmp_path):
    """Runs with a few evals (or none: the demo's) give no section, so their report is unchanged."""
    records = [_run(tmp_path, "few", MIN_EVALS - 1)]
    (tmp_path / "none").mkdir()
    rec = record("none", "dense", ["text"], 10_000, {"text": 1000}, {"text": 3.0})
    (tmp_path / "none" / "record.json").write_text(json.dumps(rec))
    assert section(pd.DataFrame(), records + [rec], tmp_path, [tmp_path]) == ([], [])


def test_section_from_frequent_evals(tmp_path):
    runs = tmp_path / "runs"
    records = [_run(runs, "p0-dense", 40), _run(runs, "p0-moe", 40, "moe")]
    df = pd.DataFrame([{"run": r["run_id"], "modality": m, "loss": 2.5, "loss_se": 0.01,
                        "floor_unigram": 3.0, "floor_bigram": 2.7} for r in records
                       for m in ("text", "code")])
    out = tmp_path / "report"
    out.mkdir()
    lines, figs = section(df, records, out, [runs])
    text = "\n".join(lines)
    assert "## Training dynamics" in text and "code-text" in text
    assert [f.name for f in figs] == ["dynamics_p0.png"] and figs[0].stat().st_size > 10_000
    alt = pd.read_csv(out / "dynamics_alternation.csv")
    assert len(alt) == 2 and set(alt["intervals"]) == {39}
    pooled = pd.read_csv(out / "dynamics_alternation_pooled.csv")
    assert sorted(pooled["family"]) == ["dense", "moe modality"] and (pooled["seeds"] == 1).all()
    for t in (alt, pooled):
        held = t.dropna(subset=["lower"])
        assert ((held["lower"] <= held["r"]) & (held["r"] <= held["upper"])).all()
    spikes = pd.read_csv(out / "dynamics_spikes.csv")
    # the trainer's counter steps from 0 to 1 between the 31st and 32nd evals: one spike, placed
    # in that interval (no per-step lines here, so no loose rule)
    assert spikes["grad_norm_spikes"].tolist() == [1, 1]
    assert spikes["grad_norm_spikes_3sd"].isna().all() and set(spikes["rule_below"]) == {"trainer's"}
    assert spikes["intervals_with_spike"].tolist() == [1, 1]
    assert (spikes["intervals_with_spike"] + spikes["intervals_without"]).tolist() == [39, 39]
    curves = pd.read_csv(out / "dynamics_curves.csv")
    assert (curves["docs"] == 3).all() and (curves["median_se_change"] > 0).all()


def test_pooled_seeds_are_narrower_and_flag_disagreement():
    runs = []
    for seed in range(3):
        x = alternation(STEPS, *staircases(np.random.default_rng(seed)))
        runs.append({"family": "dense", "modalities": "code-text", "r": x.r, "se_z": x.se_z,
                     "lower": x.lower, "upper": x.upper})
    (row,) = pool_seeds(pd.DataFrame(runs)).to_dict("records")
    assert row["seeds"] == 3 and row["lower"] <= row["r"] <= row["upper"] < 0
    assert row["upper"] - row["lower"] < min(r["upper"] - r["lower"] for r in runs)
    assert row["p_heterogeneity"] > 0.05  # the same alternation in every seed
    split = pd.DataFrame([{"family": "moe", "modalities": "a-b", "r": r, "se_z": 0.1}
                          for r in (-0.6, 0.6)])
    (row,) = pool_seeds(split).to_dict("records")
    assert row["p_heterogeneity"] < 1e-6 and row["lower"] < 0 < row["upper"]
