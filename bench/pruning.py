"""Equal compute, pruning off and on: what the same budget of scored items buys.

The knowledge benchmark (``bench/knowledge.py``: SmolLM2-135M and three
experts on made-up facts, three fact tasks and a retention task) is searched
with the same study, once per pruner and sampler seed. Each run goes on
until it has scored ``--items`` items (a whole trial scores every search
item; a pruned one, the chunks it saw; a reused merge, none), so both arms
spend the same evaluation compute whatever their trial counts. Prints per
run: trials finished (pruned among them), items scored, wall time, trials
per hour, the best search score and that trial's held-out score; then the
means over seeds and the trials-per-hour ratio.

    python bench/pruning.py [--seeds 0 1 2] [--items 6000] [--pruners none wilcoxon]
                            [--chunk 32] [--backend fast|hf]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from knowledge import build, study_file

from optimizer.config.study_config import StudyConfig
from optimizer.study.pruning import PRUNED
from optimizer.study.study import Study
from optimizer.study.worker import REUSED_FROM

METHODS = ["task_arithmetic", "ties", "della", "breadcrumbs"]


def items_scored(study: Study, n_items: int) -> int:
    from optuna.trial import TrialState

    total = 0
    for t in study.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if REUSED_FROM in t.user_attrs:
            continue
        total += t.user_attrs.get(PRUNED, {"items": n_items})["items"]
    return total


def run_arm(folder: Path, pruner: str, seed: int, budget: int, chunk: int, backend: str) -> dict:
    from optuna.trial import TrialState

    path = study_file(
        folder,
        f"prune-{pruner}-{seed}",
        {"pruner": {"name": pruner, "chunk": chunk}, "batch_size": 16, "backend": backend},
        methods=METHODS,
        sampler={"name": "tpe", "seed": seed},
        n_trials=10_000,
        seed=0,
    )
    study = Study(StudyConfig.from_yaml(path))
    study.load_models()  # outside the clock: the same for both arms
    n_items = sum(1 for _ in study.evaluator.items())
    start = time.perf_counter()
    while items_scored(study, n_items) < budget:
        study.run(n_trials=study.count(TrialState.COMPLETE) + 1)
    wall = time.perf_counter() - start
    trials = study.count(TrialState.COMPLETE)
    best = study.best_trials(1)[0]
    study.score_heldout([best])
    held = study.heldout_scores(best)
    return {
        "pruner": pruner,
        "seed": seed,
        "trials": trials,
        "pruned": len(study.pruned()),
        "items": items_scored(study, n_items),
        "wall": wall,
        "per_hour": trials / wall * 3600,
        "per_trial": wall / trials,
        "search": best.value,
        "heldout": statistics.mean(held.values()),
        "best": f"{best.number} {best.params.get('method')}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--items", type=int, default=6000, help="items each run scores")
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--pruners", nargs="+", default=["none", "wilcoxon"])
    ap.add_argument("--backend", default="fast", help="the evaluator backend: fast or hf")
    args = ap.parse_args()
    build()
    rows = []
    header = (
        "| pruner | seed | trials (pruned) | items | wall s | s/trial | trials/h "
        "| best search | its held-out | best trial |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for pruner in args.pruners:
                r = run_arm(Path(tmp), pruner, seed, args.items, args.chunk, args.backend)
                rows.append(r)
                print(
                    f"| {r['pruner']} | {r['seed']} | {r['trials']} ({r['pruned']}) | {r['items']} "
                    f"| {r['wall']:.0f} | {r['per_trial']:.1f} | {r['per_hour']:.0f} "
                    f"| {r['search']:.4f} | {r['heldout']:.4f} | {r['best']} |"
                )
                sys.stdout.flush()
    print()
    print("| pruner | trials/h (mean) | s/trial | best search (mean) | held-out (mean) |")
    print("|---|---|---|---|---|")
    means = {}
    for pruner in args.pruners:
        mine = [r for r in rows if r["pruner"] == pruner]
        means[pruner] = statistics.mean(r["per_hour"] for r in mine)
        print(
            f"| {pruner} | {means[pruner]:.0f} "
            f"| {statistics.mean(r['per_trial'] for r in mine):.1f} "
            f"| {statistics.mean(r['search'] for r in mine):.4f} "
            f"| {statistics.mean(r['heldout'] for r in mine):.4f} |"
        )
    if "none" in means:
        for pruner in args.pruners:
            if pruner != "none":
                print(f"\n{pruner}: {means[pruner] / means['none']:.2f}x the trials per hour")


if __name__ == "__main__":
    main()
