"""The paired difference: a pair's document-level SE, and pairs combined by a design model."""

import json

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


def test_compare_pairs_reads_eval_docs_and_gives_one_verdict_per_family_and_modality(tmp_path):
    rng = np.random.default_rng(2)
    shift = {"text": -0.04, "dna": 0.0}
    k = 0
    for N in (1e5, 4e5, 1.6e6):
        for D in (4e6, 1.6e7):
            for seed in range(2):
                docs = {m: _docs(rng, 120, shift[m] + rng.normal(0, 0.003), 0.03) for m in shift}
                for family, i in (("dense", 1), ("moe", 0)):
                    run = f"{family}-{k}"
                    losses = {m: float(d[i].nll_sum.sum() / d[i].tokens.sum()) for m, d in docs.items()}
                    rec = record(run, family, list(shift), int(N), {m: int(D) for m in shift}, losses,
                                 seed=seed, n_experts=8 if family == "moe" else 0, router="learned")
                    (tmp_path / run).mkdir()
                    (tmp_path / run / "record.json").write_text(json.dumps(rec))
                    (tmp_path / run / "eval_docs.json").write_text(json.dumps(
                        {m: {"nll_sum": d[i].nll_sum.tolist(), "tokens": d[i].tokens.tolist()}
                         for m, d in docs.items()}))
                k += 1
    df, _ = load_runs([tmp_path])
    docs = load_docs([tmp_path])
    assert set(docs) == set(df["run"])
    t = compare_pairs(df, docs=docs).set_index("modality")
    assert len(t) == 2 and (t["pairs with document SE"] == 12).all()
    assert t.loc["text", "verdict"] == "moe learned E=8 better"
    assert t.loc["dna", "verdict"] == "no significant difference"
    assert t.loc["text", "dL"] == pytest.approx(-0.04, abs=0.01)
    assert (t["p_holm"] >= t["p"]).all()
    assert t.loc["text", "p_holm"] == pytest.approx(min(1.0, 2 * t["p"].min()))
    # without the documents the same pairs are still combined, by OLS on the design
    bare = compare_pairs(df).set_index("modality")
    assert bare.loc["text", "model"].startswith("OLS") and bare.loc["text", "se"] > 0
