"""Unbounded interval bounds: inf in data, 'unbounded' in words, never a clipped number."""

import numpy as np
import pandas as pd

from analysis.leverage import interval_with_inf
from analysis.results import held
from analysis.tables import render


def test_an_infinite_bound_renders_as_unbounded_in_markdown_and_latex_and_inf_in_csv():
    t = pd.DataFrame({"EL": [2.0, 1.1], "lower": [1.2, np.nan], "upper": [np.inf, 1.3]})
    md, tex, csv = render(t), render(t, "latex"), render(t, "csv")
    assert "unbounded" in md and "unbounded" in tex
    assert "inf" not in md and "e+307" not in md and "e+308" not in md
    assert "nan" not in md and "nan" not in tex  # a withheld bound is blank
    assert "2.0,1.2,inf" in csv


def test_a_withheld_number_is_blank_in_markdown_and_latex():
    t = pd.DataFrame({"modality": ["text", "dna"], "EL (law)": [1.234567, np.nan]})
    md, tex = render(t), render(t, "latex")
    assert "nan" not in md.lower() and "nan" not in tex.lower()
    assert "1.235" in md and "1.235" in tex


def test_leverage_bounds_are_draws_or_inf_never_a_blend_with_float_max():
    draws = np.r_[np.linspace(1.0, 2.0, 90), np.full(10, np.inf)][:, None]
    lo, hi = interval_with_inf(draws, 0.05)
    assert hi[0] == np.inf and lo[0] in draws
    draws = np.r_[np.linspace(1.0, 2.0, 97), np.full(3, np.inf)][:, None]
    _, hi = interval_with_inf(draws, 0.05)
    assert hi[0] in draws  # 2.5% of draws above: the bound is the last finite one


def test_held_withholds_zero_width_and_excluding_intervals_and_maps_overflow_to_inf():
    lo, hi = held([1.0, 1.0, 1.0, 1.0], [0.5, 2.334, 1.1, 0.9], [1.5, 2.334, 1.2, 9.438e307])
    assert lo[0] == 0.5 and hi[0] == 1.5
    assert np.isnan(lo[1:3]).all() and np.isnan(hi[1:3]).all()
    assert hi[3] == np.inf


def test_an_unbounded_band_runs_to_the_top_of_the_axes():
    import matplotlib.pyplot as plt

    from analysis.plots import band

    fig, ax = plt.subplots()
    x = np.logspace(10, 14, 50)
    ax.plot(x, np.ones_like(x))
    band(ax, x, np.full_like(x, 0.5), np.where(x > 1e13, np.inf, 2.0), alpha=0.2)
    top = ax.get_ylim()[1]
    assert np.isfinite(top) and top < 10  # not stretched to a huge finite stand-in
    reach = max(np.nanmax(c.get_paths()[0].vertices[:, 1]) for c in ax.collections)
    assert reach >= top - 1e-9  # the unbounded part is drawn to the top, not clipped below it
    plt.close(fig)


def test_json_bounds_say_unbounded_or_null():
    from analysis.results import _bound

    assert _bound(np.inf) == "unbounded" and _bound(-np.inf) == "unbounded"
    assert _bound(np.nan) is None and _bound(1.5) == 1.5
