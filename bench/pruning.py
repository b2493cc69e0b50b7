"""Equal compute, pruning off and on: what the same budget of scored items buys.

A hard benchmark family (``bench/families.py``; default ``knowledge``:
SmolLM2-135M and three experts on made-up facts, three fact tasks and a
retention task) is searched with the same study, once per pruner and
sampler seed. Each run goes on
until it has scored ``--items`` items (a whole trial scores every search
item; a pruned one, the chunks it saw; a reused merge, none), so both arms
spend the same evaluation compute whatever their trial counts. Prints per
run: trials finished (pruned and reused among them), items scored, wall time, trials
per hour, the best search score, that trial's held-out mean over the
family's tasks and its held-out retention (apart, as ``bench/quality.py``
prints them); then the means over seeds and the trials-per-hour ratio.

    python bench/pruning.py [--seeds 0 1 2] [--items 6000] [--pruners none wilcoxon]
                            [--chunk 32] [--p-threshold 0.2] [--spending pocock]
                            [--pruned-value paired] [--limit N] [--methods ...]
                            [--backend fast|hf] [--family knowledge|skills]

An arm may set its pruner's own keys, so variants run side by side on the
same machine: ``--pruners none wilcoxon wilcoxon,pruned_value=paired``.

Every method's caches are built before the clock starts (the first TIES
candidate of a process spends tens of seconds ranking magnitudes, the same
in every arm).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from families import FAMILIES
from family import Family

from optimizer.config.study_config import StudyConfig
from optimizer.errors import MergeoptError
from optimizer.study.pruning import PRUNED, REUSED_FROM
from optimizer.study.study import Study


def items_scored(study: Study, n_items: int) -> int:
    from optuna.trial import TrialState

    total = 0
    for t in study.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if REUSED_FROM in t.user_attrs:
            continue
        total += t.user_attrs.get(PRUNED, {"items": n_items})["items"]
    return total


def warm_up(study: Study) -> None:
    """Build every method's rank and magnitude caches (tens of seconds, once per
    process, the same for every arm) before the clock starts."""
    from optimizer.config.merge_config import MergeConfig

    study.load_models()
    for _, params in study.space.start_trials():
        study.merger.materialize(MergeConfig.from_dict(study.candidate(params)))


def pruner_spec(arm: str, args) -> dict:
    """``objective.pruner`` of one arm: ``name`` or ``name,key=value,...`` (so
    one run can set variants side by side: ``wilcoxon,pruned_value=paired``;
    values are read as YAML, as the study file would); wilcoxon's settings
    given as flags apply to every wilcoxon arm that does not set them itself."""
    import yaml

    name, *pairs = arm.split(",")
    spec: dict = {"name": name, "chunk": args.chunk}
    if name == "wilcoxon":
        own = ("p_threshold", "spending", "pruned_value")
        spec.update({k: getattr(args, k) for k in own if getattr(args, k) is not None})
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--pruners {arm}: {pair!r} is not key=value")
        spec[key] = yaml.safe_load(value)
    return spec


def study_path(folder: Path, arm: str, seed: int, args) -> Path:
    """The study file of one arm and sampler seed."""
    objective = {"pruner": pruner_spec(arm, args), "batch_size": 16, "backend": args.backend}
    if args.limit:
        objective["limit"] = args.limit
    return FAMILIES[args.family].study_file(
        folder,
        f"prune-{re.sub(r'[^a-z0-9]+', '-', arm)}-{seed}",
        objective,
        **({"methods": args.methods} if args.methods else {}),
        sampler={"name": "tpe", "seed": seed},
        n_trials=10_000,
        seed=0,
    )


def run_arm(path: Path, arm: str, seed: int, budget: int, family: Family) -> dict:
    from optuna.trial import TrialState

    study = Study(StudyConfig.from_yaml(path))
    warm_up(study)
    n_items = sum(1 for _ in study.evaluator.items())
    start = time.perf_counter()
    while items_scored(study, n_items) < budget:
        if study.run(n_trials=study.count(TrialState.COMPLETE) + 1).interrupted:
            raise SystemExit("interrupted")  # Ctrl-C stops the bench, not just a trial
    wall = time.perf_counter() - start
    trials = study.count(TrialState.COMPLETE)
    best = study.best_trials(1)[0]
    study.score_heldout([best])
    held = study.heldout_scores(best)
    names = family.expert_tasks
    return {
        "pruner": arm,
        "seed": seed,
        "trials": trials,
        "pruned": len(study.pruned()),
        "reused": sum(
            REUSED_FROM in t.user_attrs
            for t in study.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        ),
        "items": items_scored(study, n_items),
        "wall": wall,
        "per_hour": trials / wall * 3600,
        "per_trial": wall / trials,
        "search": best.value,
        "heldout": statistics.mean(held[n] for n in names),
        "retention": held[family.retention],
        "best": f"{best.number} {best.params.get('method')}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--items", type=int, default=6000, help="items each run scores")
    ap.add_argument("--chunk", type=int, default=32, help="items per pruning decision")
    ap.add_argument(
        "--p-threshold", type=float, default=None, help="wilcoxon's (default: the study file's)"
    )
    ap.add_argument("--spending", default=None, help="wilcoxon's: none or pocock")
    ap.add_argument("--pruned-value", default=None, help="wilcoxon's: partial or paired")
    ap.add_argument(
        "--pruners",
        nargs="+",
        default=["none", "wilcoxon"],
        help="arms: a pruner, or pruner,key=value,... (wilcoxon,pruned_value=paired)",
    )
    ap.add_argument("--backend", default="fast", help="the evaluator backend: fast or hf")
    ap.add_argument("--limit", type=int, default=None, help="items per task (default: all)")
    ap.add_argument("--methods", nargs="+", default=None, help="default: all that fit")
    ap.add_argument("--family", default="knowledge", choices=list(FAMILIES))
    args = ap.parse_args()
    FAMILIES[args.family].build()
    rows = []
    header = (
        "| pruner | seed | trials (pruned, reused) | items | wall s | s/trial | trials/h "
        "| best search | its held-out | its retention | best trial |"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.pruners:  # a bad arm fails here, before any arm runs
            try:
                StudyConfig.from_yaml(study_path(Path(tmp), arm, args.seeds[0], args))
            except MergeoptError as e:
                raise SystemExit(f"--pruners {arm}: {e}") from None
        print(header)
        print("|" + "---|" * (header.count("|") - 1))
        for seed in args.seeds:
            for pruner in args.pruners:
                path = study_path(Path(tmp), pruner, seed, args)
                r = run_arm(path, pruner, seed, args.items, FAMILIES[args.family])
                rows.append(r)
                print(
                    f"| {r['pruner']} | {r['seed']} | {r['trials']} ({r['pruned']}, {r['reused']}) "
                    f"| {r['items']} "
                    f"| {r['wall']:.0f} | {r['per_trial']:.1f} | {r['per_hour']:.0f} "
                    f"| {r['search']:.4f} | {r['heldout']:.4f} | {r['retention']:.4f} "
                    f"| {r['best']} |"
                )
                sys.stdout.flush()
    print()
    print(
        "| pruner | trials/h (mean) | s/trial | best search (mean) | held-out (mean) "
        "| retention (mean) |"
    )
    print("|---|---|---|---|---|---|")
    means = {}
    for pruner in args.pruners:
        mine = [r for r in rows if r["pruner"] == pruner]
        means[pruner] = statistics.mean(r["per_hour"] for r in mine)
        print(
            f"| {pruner} | {means[pruner]:.0f} "
            f"| {statistics.mean(r['per_trial'] for r in mine):.1f} "
            f"| {statistics.mean(r['search'] for r in mine):.4f} "
            f"| {statistics.mean(r['heldout'] for r in mine):.4f} "
            f"| {statistics.mean(r['retention'] for r in mine):.4f} |"
        )
    if "none" in means:
        for pruner in args.pruners:
            if pruner != "none":
                print(f"\n{pruner}: {means[pruner] / means['none']:.2f}x the trials per hour")


if __name__ == "__main__":
    main()
