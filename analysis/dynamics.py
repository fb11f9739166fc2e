"""Training dynamics (Aghajanyan et al. 2023): per-modality eval curves, whether modalities
improve in alternation, and whether gradient-norm spikes come with one modality's loss rising.

Reads each run's metrics.jsonl: eval lines (the same fixed validation rows at every eval, with
each document's summed loss, so the change between two evals gets a paired SE over documents)
and per-step lines (loss, grad norm, and the trainer's cumulative spike counters).

Alternation is measured per run and pair of modalities as the correlation of their *residual
improvements* over eval intervals:
1. each modality's loss curve after the LR warmup is fitted by a cubic polynomial in log(step):
   a loss curve's trend (a power-law-like decay) is smooth and slow in log step, and a cubic
   cannot follow swings that last a few eval intervals, which is what alternation is. During
   warmup the loss falls from the uniform floor by nats in a few evals, following the learning
   rate's ramp; no smooth trend of the later decay fits that, and the shared misfit would read
   as correlation;
2. residual improvement of interval k: r(k) - r(k+1), r = loss - trend (positive: it improved
   faster than its trend). Raw improvements would correlate positively just because both curves
   fall fastest early; residuals take that shared trend out;
3. each series is divided by its trend in size (|residual improvement| fitted log-linearly in
   log step), so early intervals, where everything moves by tenths of a nat, do not dominate, and
   the null below, which moves intervals in time, compares like with like;
4. r = Pearson correlation of the two standardized series. Negative: when one modality improves
   faster than its trend the other improves slower (alternation); 0: independent.
The null of independent improvements is built by circular shifts of one series against the
other (each shift keeps both series' own autocorrelation and breaks only their alignment; shifts
within sqrt(J) intervals of zero are left out). Its spread, the SD of the shifted correlations'
Fisher z (never below that of J independent intervals), is the SE of z: the 95% interval is
tanh(z +- 1.96 SE) and the p-value 2 Phi(-|z| / SE), so the interval excludes 0 exactly when
p < 0.05. On independent synthetic decays (iid or autocorrelated noise) the interval covers 0 at
0.93-0.96, where a moving-block bootstrap of the intervals covered only 0.86-0.89
(tests/analysis/test_dynamics.py).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from scipy import stats  # noqa: E402

from analysis.errors import AnalysisError  # noqa: E402
from analysis.paired import DocLosses, pair_difference  # noqa: E402
from analysis.plots import save  # noqa: E402
from analysis.records import family_key  # noqa: E402
from analysis.results import bound_text, held  # noqa: E402
from analysis.tables import render  # noqa: E402

MIN_EVALS = 16  # eval points a run needs for its curve to be analysed (15 intervals)
LOOSE_SIGMA = 3.0  # a second, looser grad-norm spike rule, for runs the trainer's rule finds none in
TREND_DEGREE = 3


@dataclass
class Curves:
    """One run's eval curve, the change of each modality between evals, and its per-step log."""

    run: str
    family: str
    seed: int
    pair: str | None
    loss: pd.DataFrame  # index step, a column per modality (nats/token, the curve's rows)
    change: pd.DataFrame  # step_from, step_to, modality, dL (later - earlier), se, docs
    steps: pd.DataFrame  # step, loss, grad_norm, loss_spikes, grad_norm_spikes (cumulative)
    spike_sigma: float | None  # the trainer's spike rule (run.spike_sigma, run.spike_window)
    spike_window: int | None
    warmup: int  # LR warmup steps: the alternation measure uses the evals after them

    def after_warmup(self) -> pd.DataFrame:
        return self.loss[self.loss.index > self.warmup]


@dataclass(frozen=True)
class Alternation:
    """Correlation of two modalities' residual improvements, its interval and null p-value."""

    r: float
    lower: float
    upper: float
    p: float
    intervals: int
    se_z: float  # SE of Fisher's z of r
    n_eff: float  # independent intervals as informative as these: 3 + 1 / SE(z)^2


def read_metrics(path: Path) -> tuple[list[dict], pd.DataFrame]:
    """(eval lines, per-step lines as a table) of one metrics.jsonl; a line that is not JSON is
    an error naming the file and line (a line cut short by a kill is the last one: skipped)."""
    raw = path.read_text().splitlines()
    evals, steps = [], []
    for i, line in enumerate(raw, 1):
        try:
            x = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(raw):
                continue
            raise AnalysisError(f"{path}:{i}: not a JSON line ({e.msg})") from None
        if not isinstance(x, dict) or "step" not in x:
            raise AnalysisError(f"{path}:{i}: a metrics line needs a 'step'")
        if "eval" in x:
            evals.append(x)
        elif "grad_norm" in x and not x.get("diverged"):
            steps.append({k: x.get(k) for k in ("step", "loss", "grad_norm", "loss_spikes",
                                                  "grad_norm_spikes")})
    return evals, pd.DataFrame(steps, columns=["step", "loss", "grad_norm", "loss_spikes",
                                               "grad_norm_spikes"])


def run_curves(run_dir: Path, record: dict) -> Curves | None:
    """The run's curves, or None when its metrics.jsonl has fewer than MIN_EVALS evals of at
    least two modalities after the LR warmup (a run not made for this analysis)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    evals, steps = read_metrics(path)
    mods = sorted(m for m in (record["eval"].get("final") or {}) if "->" not in m)
    evals = [e for e in evals if all(m in e["eval"] for m in mods)]
    cfg = _config(run_dir)
    run, warmup = cfg.get("run") or {}, _warmup_steps(cfg, record)
    if sum(e["step"] > warmup for e in evals) < MIN_EVALS or len(mods) < 2:
        return None
    loss = pd.DataFrame([{m: e["eval"][m] for m in mods} for e in evals],
                        index=pd.Index([e["step"] for e in evals], name="step"))
    rows = []
    for a, b in zip(evals[:-1], evals[1:], strict=True):
        for m in mods:
            dl, se, docs = b["eval"][m] - a["eval"][m], math.nan, 0
            if (m in a.get("docs", {}) and m in b.get("docs", {})
                    and a["doc_tokens"][m] == b["doc_tokens"][m]):
                tok = np.asarray(b["doc_tokens"][m], np.int64)
                docs = int((tok > 0).sum())
                dl, se = pair_difference(DocLosses(np.asarray(b["docs"][m], float), tok),
                                         DocLosses(np.asarray(a["docs"][m], float), tok))
            rows.append({"step_from": a["step"], "step_to": b["step"], "modality": m, "dL": dl,
                         "se": se, "docs": docs})
    rec_df = pd.DataFrame([{"family": record["family"], "router": record.get("router"),
                            "n_experts": (record.get("model") or {}).get("n_experts", 0) or 0,
                            "top_k": (record.get("model") or {}).get("top_k") or 0}])
    return Curves(record["run_id"], family_key(rec_df).iloc[0], record["seed"],
                  record.get("pair_id"), loss, pd.DataFrame(rows), steps, run.get("spike_sigma"),
                  run.get("spike_window"), warmup)


def _config(run_dir: Path) -> dict:
    """The run's resolved config.yaml ({} where unreadable)."""
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _warmup_steps(cfg: dict, record: dict) -> int:
    """LR warmup steps as the trainer computes them (train.warmup: a fraction of the planned
    steps below 1, else steps); 0 where the config or the planned steps are unknown."""
    w = (cfg.get("train") or {}).get("warmup")
    steps = (record.get("tokens") or {}).get("steps_planned")
    if not isinstance(w, (int, float)) or not steps:
        return 0
    return min(steps, round(w * steps) if w < 1 else int(w))


def spike_steps(steps: np.ndarray, values: np.ndarray, sigma: float, window: int) -> np.ndarray:
    """Steps whose value exceeds the mean of the previous `window` values by `sigma` of their SDs
    (the trainer's rule, moe_vs_dense/train/metrics.py `Spikes`, applied to per-step values)."""
    v = np.asarray(values, float)
    out = []
    for i in range(window, len(v)):
        prev = v[i - window:i]
        mean = prev.mean()
        if v[i] > mean + sigma * max(prev.std(ddof=1), 1e-6 * abs(mean)):
            out.append(int(steps[i]))
    return np.array(out, dtype=np.int64)


def loose_spikes(c: Curves) -> np.ndarray | None:
    """Grad-norm spike steps at LOOSE_SIGMA SDs over the run's spike window, from its per-step
    lines; None where the lines are not one per step (run.log_every above 1) or the window is
    unknown."""
    s = c.steps.sort_values("step")
    steps = s["step"].to_numpy()
    if not c.spike_window or len(steps) == 0 or not np.array_equal(steps, np.arange(1, len(steps) + 1)):
        return None
    return spike_steps(steps, s["grad_norm"].to_numpy(), LOOSE_SIGMA, int(c.spike_window))


def residual_improvements(steps_K: np.ndarray, loss_K: np.ndarray) -> np.ndarray:
    """Standardized residual improvements of one curve over its K-1 eval intervals (steps 1-3
    of the module docstring)."""
    u_K = np.log(np.asarray(steps_K, float))
    loss_K = np.asarray(loss_K, float)
    trend = np.polynomial.Polynomial.fit(u_K, loss_K, TREND_DEGREE)
    r_K = loss_K - trend(u_K)
    e_J = r_K[:-1] - r_K[1:]
    mid_J = (u_K[:-1] + u_K[1:]) / 2
    size = np.polynomial.Polynomial.fit(mid_J, np.log(np.abs(e_J) + 1e-12), 1)
    return e_J / np.exp(size(mid_J))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else math.nan


def alternation(steps_K: np.ndarray, loss_a_K: np.ndarray, loss_b_K: np.ndarray) -> Alternation:
    """Correlation of two modalities' residual improvements (negative: alternation), its 95%
    interval (NaN where it would not hold its estimate) and the two-sided p-value of the
    circular-shift null of independent improvements (module docstring)."""
    if len(steps_K) < MIN_EVALS:
        raise AnalysisError(f"alternation needs at least {MIN_EVALS} evals, not {len(steps_K)}")
    za, zb = residual_improvements(steps_K, loss_a_K), residual_improvements(steps_K, loss_b_K)
    J = len(za)
    lags = max(2, round(math.sqrt(J)))
    r = _corr(za, zb)
    if not math.isfinite(r):  # a curve that does not move beyond its trend
        return Alternation(math.nan, math.nan, math.nan, math.nan, J, math.nan, math.nan)
    shifted = np.array([_corr(za, np.roll(zb, s)) for s in range(lags, J - lags + 1)])
    sd_z = max(float(np.std(np.arctanh(np.clip(shifted, -0.999999, 0.999999)), ddof=1)),
               1 / math.sqrt(J - 3))  # never more informative than J independent intervals
    z = math.atanh(max(-0.999999, min(0.999999, r)))
    lo, hi = held(r, math.tanh(z - 1.959964 * sd_z), math.tanh(z + 1.959964 * sd_z))
    p = 2 * stats.norm.sf(abs(z) / sd_z)
    return Alternation(r, float(lo), float(hi), float(p), J, sd_z, 3 + 1 / sd_z**2)


def margin(change: pd.DataFrame) -> pd.Series:
    """The 95% margin of each change between evals: Student's t on (documents - 1) degrees of
    freedom times its SE (NaN from one document)."""
    docs = change["docs"].to_numpy(float)
    t = np.where(docs >= 2, stats.t.ppf(0.975, np.maximum(docs - 1, 1)), np.nan)
    return pd.Series(t * change["se"].to_numpy(float), index=change.index)


def spikes_by_interval(c: Curves) -> pd.DataFrame:
    """Per eval interval (step_from, step_to]: grad-norm and loss spikes in it by the trainer's
    rule (its cumulative counters at the last logged step of each end), grad-norm spikes by the
    LOOSE_SIGMA rule (NaN without per-step lines), and the modalities whose loss rose by more
    than its 95% margin (`margin`)."""
    s = c.steps.sort_values("step")
    at = lambda col, step: int(s.loc[s["step"] <= step, col].iloc[-1]) if (s["step"] <= step).any() else 0  # noqa: E731
    loose = loose_spikes(c)
    rows = []
    for (a, b), g in c.change.groupby(["step_from", "step_to"], sort=True):
        rose = g[g["dL"] > margin(g)]["modality"].tolist()
        rows.append({"step_from": a, "step_to": b,
                     "grad_spikes": at("grad_norm_spikes", b) - at("grad_norm_spikes", a),
                     "loss_spikes": at("loss_spikes", b) - at("loss_spikes", a),
                     "grad_spikes_loose": np.nan if loose is None else
                     int(((loose > a) & (loose <= b)).sum()),
                     "rose": ",".join(rose), "measured": bool(g["se"].notna().all())})
    return pd.DataFrame(rows)


def find_curves(inputs: list[str | Path], records: list[dict]) -> list[Curves]:
    """Curves of the completed runs (`records`) whose run directories under `inputs` hold
    frequent evals; runs without are left out."""
    ids = {r["run_id"]: r for r in records}
    out = []
    for p in map(Path, inputs):
        files = [p] if p.is_file() else sorted(p.rglob("record.json")) if p.is_dir() else []
        for f in files:
            try:
                run = json.loads(f.read_text()).get("run_id")
            except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                continue
            if run in ids:
                c = run_curves(f.parent, ids.pop(run))
                if c is not None:
                    out.append(c)
    return sorted(out, key=lambda c: (str(c.pair), c.family != "dense", c.family, c.run))


def _alternation_table(curves: list[Curves]) -> pd.DataFrame:
    """Per run and pair of modalities: the alternation measure (unadjusted p: secondary)."""
    rows = []
    for c in curves:
        mods = list(c.loss.columns)
        for i, a in enumerate(mods):
            for b in mods[i + 1:]:
                loss = c.after_warmup()
                x = alternation(loss.index.to_numpy(), loss[a].to_numpy(), loss[b].to_numpy())
                rows.append({"run": c.run, "family": c.family, "seed": c.seed,
                             "modalities": f"{a}-{b}", "intervals": x.intervals,
                             "n_eff": round(x.n_eff, 1), "r": x.r, "lower": x.lower,
                             "upper": x.upper, "p": x.p, "se_z": x.se_z})
    return pd.DataFrame(rows)


def pool_seeds(alt: pd.DataFrame) -> pd.DataFrame:
    """Per family and pair of modalities, the runs' (seeds') Fisher z averaged with inverse-variance
    weights (one common r; `p_heterogeneity`: Cochran's Q against it), its 95% interval, p against
    independent improvements and Holm's adjustment over the rows: the section's primary answer."""
    from statsmodels.stats.multitest import multipletests

    rows = []
    for (family, mods), g in alt.groupby(["family", "modalities"], sort=True):
        z = np.arctanh(np.clip(g["r"].to_numpy(), -0.999999, 0.999999))
        w = 1 / g["se_z"].to_numpy() ** 2
        zbar, se = float(np.sum(w * z) / w.sum()), float(1 / math.sqrt(w.sum()))
        lo, hi = held(math.tanh(zbar), math.tanh(zbar - 1.959964 * se), math.tanh(zbar + 1.959964 * se))
        q = float(np.sum(w * (z - zbar) ** 2))
        rows.append({"family": family, "modalities": mods, "seeds": len(g), "r": math.tanh(zbar),
                     "lower": float(lo), "upper": float(hi), "p": 2 * stats.norm.sf(abs(zbar) / se),
                     "p_heterogeneity": stats.chi2.sf(q, len(g) - 1) if len(g) > 1 else np.nan})
    t = pd.DataFrame(rows, columns=["family", "modalities", "seeds", "r", "lower", "upper", "p",
                                    "p_heterogeneity"])
    t["p_holm"] = multipletests(t["p"], method="holm")[1] if len(t) else []
    return t


def _shown(t: pd.DataFrame) -> pd.DataFrame:
    """An alternation table as printed: bounds in words (blank: not held)."""
    return t.drop(columns="se_z", errors="ignore").assign(
        lower=[bound_text(v, ".3f") for v in t["lower"]],
        upper=[bound_text(v, ".3f") for v in t["upper"]])


def _curve_table(curves: list[Curves], df: pd.DataFrame) -> pd.DataFrame:
    """Per run and modality: the curve's precision (paired SE of a change between evals beside
    the changes themselves) and the final loss beside its floors."""
    rows = []
    for c in curves:
        for m, g in c.change.groupby("modality", sort=False):
            late = g[g["step_from"] >= g["step_from"].median()]
            fin = df[(df["run"] == c.run) & (df["modality"] == m)]
            f = fin.iloc[0] if len(fin) else pd.Series(dtype=float)
            rows.append({
                "run": c.run, "family": c.family, "modality": m, "evals": len(c.loss),
                "docs": int(g["docs"].max()),
                "median_abs_change": float(late["dL"].abs().median()),
                "median_se_change": float(late["se"].median()),
                "changes_beyond_margin": f"{int((g['dL'].abs() > margin(g)).sum())}/{len(g)}",
                "final_loss": f.get("loss", np.nan), "final_se": f.get("loss_se", np.nan),
                "unigram": f.get("floor_unigram", np.nan), "bigram": f.get("floor_bigram", np.nan)})
    return pd.DataFrame(rows)


def _spike_table(curves: list[Curves]) -> pd.DataFrame:
    """Per run: spike counts by both rules, and the measured eval intervals with and without a
    grad-norm spike (the loose rule where the run logs every step, else the trainer's), each with
    how many saw a modality's loss rise."""
    rows = []
    for c in curves:
        s = spikes_by_interval(c)
        col = "grad_spikes" if s["grad_spikes_loose"].isna().any() else "grad_spikes_loose"
        m = s[s["measured"]]
        with_spike, without = m[m[col] > 0], m[m[col] == 0]
        last = c.steps.sort_values("step").iloc[-1] if len(c.steps) else None
        loose = loose_spikes(c)
        rows.append({
            "run": c.run, "family": c.family, "seed": c.seed,
            "grad_norm_spikes": int(last["grad_norm_spikes"]) if last is not None else 0,
            "loss_spikes": int(last["loss_spikes"]) if last is not None else 0,
            f"grad_norm_spikes_{LOOSE_SIGMA:g}sd": np.nan if loose is None else len(loose),
            "rule_below": f"{LOOSE_SIGMA:g} SD" if col == "grad_spikes_loose" else "trainer's",
            "intervals_with_spike": len(with_spike),
            "of_them_a_loss_rose": int((with_spike["rose"] != "").sum()),
            "intervals_without": len(without),
            "of_those_a_loss_rose": int((without["rose"] != "").sum()),
            "rises": ", ".join(f"{r['rose']}@{r['step_to']}" for _, r in s[s["rose"] != ""].iterrows())})
    return pd.DataFrame(rows)


def _spike_marks(c: Curves) -> list[int]:
    """Grad-norm spike steps to mark: the loose rule's where the run logs every step, else the
    ends of the logged steps where the trainer's counter rose."""
    loose = loose_spikes(c)
    if loose is not None:
        return loose.tolist()
    s = c.steps.sort_values("step")
    return s.loc[s["grad_norm_spikes"].diff().fillna(s["grad_norm_spikes"]) > 0, "step"].tolist()


def plot_pair(curves: list[Curves], df: pd.DataFrame, path: Path) -> Path:
    """The eval curves of one pair's runs per modality (nats/token on the curve's rows), with
    the unigram and bigram floors, grad-norm spikes as vertical ticks, and every step's grad norm."""
    mods = list(curves[0].loss.columns)
    fig, axes = plt.subplots(1, len(mods) + 1, figsize=(4.0 * (len(mods) + 1), 3.4), squeeze=False)
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
    colors = {c.family: palette[i % len(palette)] for i, c in enumerate(curves)}
    for ax, m in zip(axes.flat, mods, strict=False):
        lows, highs = [], []
        for c in curves:
            y = c.loss[m]
            ax.plot(y.index, y.to_numpy(), color=colors[c.family], lw=1.2, marker=".", ms=3,
                    label=c.family)
            for step in _spike_marks(c):
                ax.axvline(step, color=colors[c.family], lw=0.6, ls=":", alpha=0.8)
            lows.append(y.min())
            highs.append(y[y.index >= y.index.max() * 0.1].max())
        fl = df[(df["run"] == curves[0].run) & (df["modality"] == m)]
        for col, ls in (("floor_unigram", "--"), ("floor_bigram", "-.")):
            v = fl[col].iloc[0] if len(fl) else np.nan
            if np.isfinite(v):
                ax.axhline(v, color="gray", ls=ls, lw=1, label=col.removeprefix("floor_") + " floor")
                lows.append(v)
                highs.append(v)
        span = max(highs) - min(lows)
        ax.set_ylim(min(lows) - 0.05 * span, max(highs) + 0.1 * span)
        ax.set(title=m, xlabel="step", ylabel="held-out loss (nats/token)")
        ax.title.set_fontsize(10)
    axes.flat[0].legend(fontsize=7)
    ax = axes.flat[len(mods)]
    for c in curves:
        ax.plot(c.steps["step"], c.steps["grad_norm"], color=colors[c.family], lw=0.7,
                label=c.family)
        at = c.steps.set_index("step")["grad_norm"]
        marks = [m for m in _spike_marks(c) if m in at.index]
        ax.plot(marks, at.loc[marks], "x", color=colors[c.family], ms=5)
    ax.set(yscale="log", title="grad norm (before clipping)", xlabel="step")
    ax.title.set_fontsize(10)
    fig.suptitle(f"pair {curves[0].pair}: eval every {int(np.diff(curves[0].loss.index).min())} "
                 "steps on fixed validation rows; dotted lines and x: grad-norm spikes "
                 f"({LOOSE_SIGMA:g} SD rule where every step is logged)", fontsize=9)
    return save(fig, path)


def section(df: pd.DataFrame, records: list[dict], out: Path,
            inputs: list[str | Path]) -> tuple[list[str], list[Path]]:
    """The report's training-dynamics section and its figures; ([], []) when no run has an eval
    curve frequent enough (MIN_EVALS evals of two modalities or more)."""
    title = ["", "## Training dynamics: do modalities improve in alternation?", ""]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", np.exceptions.RankWarning)
            curves = find_curves(inputs, records)
            if not curves:
                return [], []
            alt = _alternation_table(curves)
            pooled = pool_seeds(alt.dropna(subset=["r"]))
    except AnalysisError as e:
        return title + [f"Not analysed: {e}"], []
    curve_t, spike_t = _curve_table(curves, df), _spike_table(curves)
    for name, t in (("dynamics_alternation", alt), ("dynamics_alternation_pooled", pooled),
                    ("dynamics_curves", curve_t),
                    ("dynamics_spikes", spike_t)):
        t.to_csv(out / f"{name}.csv", index=False)
    figs = []
    by_pair: dict[str, list[Curves]] = {}
    for c in curves:
        by_pair.setdefault(str(c.pair or c.run), []).append(c)
    for pair, cs in by_pair.items():
        figs.append(plot_pair(cs, df, out / f"dynamics_{pair}.png"))
    below, above = int((pooled["upper"] < 0).sum()), int((pooled["lower"] > 0).sum())
    sig = pooled[pooled["p_holm"] < 0.05]
    rule = "; ".join(sorted({f"{c.spike_sigma:g} SD over the previous {c.spike_window} steps"
                             if c.spike_sigma and c.spike_window else "run.spike_sigma SD over "
                             "the previous run.spike_window steps (settings unreadable)"
                             for c in curves}))
    lines = title + [
        f"{len(curves)} runs evaluated every few steps on the same validation rows at every eval "
        "(the first rows of each stream's validation split). Losses in nats/token on those rows; "
        "floors (unigram, bigram: count models of the training data) are on the final "
        "evaluation's rows, of which the curve's rows are the first. Paired keys (a label given "
        "its image) are left out.", "",
        "### How precisely the curves are measured", "",
        "A change between two evals is measured on the same documents, so its SE is the "
        "ratio-estimator SE over documents of each document's change (`median_se_change`, "
        "beside `median_abs_change`, both over the second half of training); `docs`: validation "
        "documents behind it. `changes_beyond_margin`: intervals whose change exceeds its 95% "
        "margin, t x SE with t Student's 97.5% point on docs - 1 degrees of freedom (an SE from "
        "a few documents is itself rough: t = 4.3 from 3 documents, 2.2 from 11). The final "
        "loss (its SE over the final rows' documents) beside its floors.", "",
        "([dynamics_curves.csv](dynamics_curves.csv))", "", render(curve_t), "",
        "### Alternation", "",
        "r = correlation of two modalities' residual improvements over the eval intervals "
        "after the LR warmup (each curve's improvement beyond a cubic trend in log step, scaled "
        "by its trend in size): negative when one modality improves faster than its trend while "
        "the other improves slower, as in coordinate ascent; 0 when they are independent; "
        "positive when they move together. r weighs every interval alike: one episode (a "
        "modality on a plateau for a few intervals while another falls) is a few of its "
        "intervals, so read episodes off the figures. Per family, the seeds pooled (Fisher's z averaged "
        "with inverse-variance weights: one common r; `p_heterogeneity`: Cochran's Q, small "
        "when the seeds disagree beyond their noise). 95% intervals; a blank one would not have "
        "held its estimate. `p`: two-sided, against independent improvements; `p_holm`: Holm "
        f"over the {len(pooled)} rows of this table, the section's one multiplicity policy. "
        f"{below} of {len(pooled)} pooled intervals lie below 0, {above} above; "
        + (f"{len(sig)} survive Holm at 5%: " + ", ".join(
            f"{f} {m} (r {r:.2f})" for f, m, r in zip(sig["family"], sig["modalities"], sig["r"],
                                                       strict=True))
           if len(sig) else "none survives Holm at 5%") + ".", "",
        "([dynamics_alternation_pooled.csv](dynamics_alternation_pooled.csv))", "",
        render(_shown(pooled)), "",
        "Secondary, per run (unadjusted p): the interval is Fisher's z of r +- 1.96 SE, the SE "
        "being the SD of z under the null of independent improvements (circular shifts of one "
        "series against the other, which keep each series' autocorrelation); the interval "
        "excludes 0 exactly when p < 0.05; `n_eff` = 3 + 1/SE^2, the number of independent "
        "intervals that would be as informative.", "",
        "([dynamics_alternation.csv](dynamics_alternation.csv))", "", render(_shown(alt)), "",
        "### Spikes and rising losses", "",
        "Spikes: a step's grad norm (train loss) above the mean of the previous steps by "
        f"{rule} (the trainer's rule: `grad_norm_spikes`, `loss_spikes`); "
        f"`grad_norm_spikes_{LOOSE_SIGMA:g}sd`: the same rule at {LOOSE_SIGMA:g} SD, computed here "
        "from every step's grad norm (blank where the run did not log every step). Each eval "
        "interval is checked for a grad-norm spike (by `rule_below`) and for a modality whose "
        "loss rose by more than its 95% margin (above; intervals with an unmeasured SE, "
        "from one document, are left out); `rises` lists every such rise as modality@step. "
        "Counts, no test.", "",
        "([dynamics_spikes.csv](dynamics_spikes.csv))", "", render(spike_t), "",
        "Figures " + ", ".join(p.name for p in figs) + " (under Figures): per pair, each "
        "modality's eval curve for every family with its unigram (dashed) and bigram "
        "(dash-dot) floors, dotted lines at the grad-norm spikes of the table's rule, and every "
        "step's grad norm (x: its spikes).", ""]
    return lines, figs
