import numpy as np
import pandas as pd
import pytest

from analysis.isoflop import budgets, isoflop
from analysis.synthetic import HOFFMANN


def isoflop_runs(noise=0.0, seed=0) -> pd.DataFrame:
    t = HOFFMANN
    rng = np.random.default_rng(seed)
    rows = []
    for C in (1e18, 1e19, 1e20, 1e21):
        for N in np.exp(np.linspace(np.log(3e7), np.log(3e10), 25)):
            D = C / (6 * N)
            loss = t["E"] + t["A"] / N ** t["alpha"] + t["B"] / D ** t["beta"]
            rows.append({"N": N, "D": D, "C": C * (1 + 0.02 * rng.random()),
                         "loss": loss * np.exp(rng.normal(0, noise))})
    return pd.DataFrame(rows)


def test_budgets_group_nearby_compute():
    df = pd.DataFrame({"C": [1.0e18, 1.05e18, 3e18, 1e19, 1.02e19]})
    assert budgets(df).tolist() == [0, 0, 1, 2, 2]


def test_isoflop_exponent_matches_the_law():
    table, fit = isoflop(isoflop_runs(noise=0.002))
    assert len(table) == 4 and fit["budgets"] == 4
    a_true = HOFFMANN["beta"] / (HOFFMANN["alpha"] + HOFFMANN["beta"])
    assert fit["a"] == pytest.approx(a_true, abs=0.03)
    assert fit["a_lower"] < fit["a"] < fit["a_upper"]


def test_budget_without_bracketing_sizes_is_skipped():
    df = isoflop_runs()
    df = df[~((df["C"] < 2e18) & (df["N"] > 5e7))]  # smallest budget: only sizes below its optimum
    table, _ = isoflop(df)
    assert len(table) == 3 and table["C"].min() > 5e18


def test_report_shows_isoflop_exponent(tmp_path):
    import json

    from analysis.report import write_report
    from analysis.synthetic import record

    for i, row in isoflop_runs(noise=0.002).iloc[::2].iterrows():
        rec = record(f"r{i}", "dense", ["text"], int(row["N"]), {"text": int(row["D"])},
                     {"text": row["loss"]})
        rec["compute"] = row["C"]
        rec["eval"]["final"]["text"]["se"] = 0.004 if i % 4 else 0.02
        (tmp_path / "runs" / f"r{i}").mkdir(parents=True)
        (tmp_path / "runs" / f"r{i}" / "record.json").write_text(json.dumps(rec))
    text = write_report([tmp_path / "runs"], tmp_path / "out", bootstrap=10).read_text()
    index = isoflop_runs(noise=0.002).iloc[::2].index
    high = sum(1 for i in index if i % 4 == 0)  # the records' SEs, as the report counts them
    assert f"max 0.02 nats/token; {len(index) - high} of {len(index)} are at most 0.005" in text
    section = text.split("## IsoFLOP profiles")[1].split("##")[0]
    row = next(line for line in section.splitlines() if line.startswith("| dense"))
    a_iso, a3 = float(row.split("|")[3]), float(row.split("|")[-2])
    a_true = HOFFMANN["beta"] / (HOFFMANN["alpha"] + HOFFMANN["beta"])
    assert a_iso == pytest.approx(a_true, abs=0.03) and a3 == pytest.approx(a_true, abs=0.03)
