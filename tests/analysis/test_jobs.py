"""Which runs each MoE law is fitted to: never pooled across what the law has no term for."""

import warnings

import numpy as np
import pandas as pd
import pytest

from analysis.bimodal import bimodal_jobs
from analysis.law_bank import GRANULARITY, fit_law
from analysis.routed import routed_jobs
from analysis.synthetic_moe import bank_runs, rows


def _runs(family, router, experts, D, k=1, modality="text", modalities=None, granularity=np.nan):
    N = np.array([1e6, 3e6, 1e7])
    out = rows(family, N, np.full(3, D), np.full(3, 3.0), modality, 0, experts, router)
    return out.assign(top_k=k if experts else 0, granularity=granularity,
                      modalities=modalities or modality,
                      run=[f"{family}-{router}-{experts}-{k}-{D:g}-{modality}-{modalities}-{i}"
                           for i in range(3)])


def test_routed_jobs_never_pool_routers_top_k_or_token_budgets():
    df = pd.concat([_runs("dense", None, 0, 1e8), _runs("dense", None, 0, 1e9),
                    *(_runs("moe", "learned", e, D) for e in (4, 16) for D in (1e8, 1e9)),
                    _runs("moe", "learned", 8, 1e8, k=2), _runs("moe", "modality", 4, 1e8),
                    _runs("mot", None, 0, 1e8)], ignore_index=True)
    jobs = routed_jobs(df)
    groups = sorted((g["router"], g["top_k"], g["D"]) for g, _ in jobs)
    assert groups == [("learned", 1, 1e8), ("learned", 1, 1e9), ("learned", 2, 1e8), ("modality", 1, 1e8)]
    for g, r in jobs:
        assert r["D"].nunique() == 1 and r["D"].iloc[0] == g["D"]  # one token count
        moe = r[r["family"] == "moe"]
        assert set(moe["router"]) == {g["router"]} and set(moe["top_k"]) == {g["top_k"]}
        assert (r.loc[r["family"] == "dense", "E"] == 1).all() and "mot" not in set(r["family"])
    learned = next(r for g, r in jobs if g == {"modality": "text", "router": "learned", "top_k": 1, "D": 1e8})
    assert sorted(learned["E"].unique()) == [1, 4, 16]


def test_bimodal_law_of_an_moe_family_needs_its_own_unimodal_runs():
    pair = "text+dna"
    joint = [_runs(f, r, e, 1e8, modality=m, modalities=pair) for f, r, e in
             (("dense", None, 0), ("moe", "learned", 8)) for m in ("text", "dna")]
    dense_uni = [_runs("dense", None, 0, 1e8, modality=m) for m in ("text", "dna")]
    df = pd.concat(joint + dense_uni, ignore_index=True)
    with pytest.warns(UserWarning, match="moe learned E=8 on text\\+dna.*no unimodal runs"):
        jobs = bimodal_jobs(df)
    assert [g["family"] for g, _ in jobs] == ["dense"]
    moe_uni = [_runs("moe", "learned", 8, 1e8, modality=m) for m in ("text", "dna")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jobs = dict((g["family"], r) for g, r in bimodal_jobs(pd.concat([df, *moe_uni], ignore_index=True)))
    assert set(jobs) == {"dense", "moe learned E=8"}
    uni = jobs["moe learned E=8"]
    uni = uni[uni["modalities"] != pair]
    assert len(uni) == 6 and (uni["family"] == "moe learned E=8").all()


def test_granularity_law_is_fitted_per_expert_count_and_mot_does_not_break_it():
    df = bank_runs("granularity", seed=1)
    mot = df[df["family"] == "moe"].head(10).assign(family="mot", n_experts=0, router=None,
                                                    granularity=np.nan, run=lambda x: x["run"] + "-mot")
    r = fit_law(GRANULARITY, pd.concat([df, mot], ignore_index=True), {"modality": "text"}, bootstrap=0)
    assert r.nobs == int((df["family"] == "moe").sum())  # the MoT runs are not among its rows
    assert r.params["gamma"] == pytest.approx(0.6, abs=0.1)


def test_chinchilla_fit_table_names_the_mixture_each_row_was_fitted_to(bimodal_runs):
    from analysis.fit import fit_groups
    from analysis.records import load_runs
    from analysis.tables import fits_table

    df, _ = load_runs([bimodal_runs])
    table = fits_table(fit_groups(df, "chinchilla", bootstrap=0))
    # dense text and dna runs exist alone and in text+dna: the joint mixture is fitted, and says so
    assert set(table["mixture"]) == {"text+dna"} and set(table["modality"]) == {"text", "dna"}


def test_fit_command_offers_exactly_the_laws_analysis_fits_to_groups():
    from analysis.fit import LAWS
    from moe_vs_dense.cli import build_parser

    fit = build_parser()._subparsers._group_actions[0].choices["fit"]
    law = next(a for a in fit._actions if a.dest == "law")
    assert list(law.choices) == list(LAWS)
