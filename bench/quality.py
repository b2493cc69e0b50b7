"""Does a search find clearly better merges? Strategies side by side, same budget.

On each hard benchmark family (``bench/families.py``), each search strategy
runs the same study (every method that fits, the family's fact or skill
tasks plus retention) for the same number of trials, once per sampler seed;
the best trial is scored on the held-out splits. Printed per family: the
experts and the simple merges (no search), then each strategy's mean and
spread over the seeds of the best trial's search score, held-out mean over
the experts' tasks, retention, and normalized held-out (each task's held-out
score over its own expert's, averaged). ``--floor 0.9`` gives every
strategy the constraint ``<family>_retention >= 0.9``. ``--items N`` gives
every run the same budget of scored items instead of trials (as
``bench/pruning.py`` does: a pruned trial costs the items it saw, a reused
merge none), the fair budget once some strategies prune.

    python bench/quality.py [--families knowledge skills] [--seeds 0 1 2]
                            [--trials 60 | --items 9000] [--limit N]
                            [--strategies random tpe] [--floor 0.9]
                            [--no-references]

Strategies are study-file settings (``STRATEGIES``); a new search default is
one more entry, measured against the others in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from families import FAMILIES
from family import Family
from optuna.trial import TrialState
from pruning import items_scored, warm_up

from optimizer.config.study_config import StudyConfig
from optimizer.study.study import Study
from optimizer.study.worker import start_label

# name -> (study-file keys, objective keys): what each strategy changes
STRATEGIES: dict[str, tuple[dict, dict]] = {
    "random": ({"sampler": {"name": "random"}}, {}),
    "tpe": ({}, {}),  # the study file's defaults
    # stop 30's default: a sampled repeat of a scored merge is a trial with its scores
    "tpe-reuse": ({"search": {"repeats": "reuse"}}, {}),
    "staged": ({"search": "staged"}, {}),
    "staged-wilcoxon": ({"search": "staged"}, {"pruner": {"name": "wilcoxon", "chunk": 16}}),
    "tpe-wilcoxon": ({}, {"pruner": {"name": "wilcoxon", "chunk": 16}}),
}


def run(family: Family, strategy: str, seed: int, folder: Path, args) -> dict:
    """One search; its best trial's scores. The budget is ``args.trials``
    trials, or with ``args.items`` that many scored items."""
    top, objective = STRATEGIES[strategy]
    if args.floor is not None:
        objective = {**objective, "constraints": [f"{family.retention} >= {args.floor}"]}
    if args.limit:
        objective = {**objective, "limit": args.limit}
    sampler = {**{"name": "tpe"}, **top.get("sampler", {}), "seed": seed}
    trials = 10_000 if args.items else args.trials
    path = family.study_file(
        folder,
        f"{family.name}-{strategy}-{seed}",
        {"batch_size": 16, **objective},
        **{**top, "sampler": sampler, "n_trials": trials, "seed": 0},
    )
    study = Study(StudyConfig.from_yaml(path))
    warm_up(study)  # the rank caches, before the clock (as bench/pruning.py does)
    start = time.perf_counter()
    if args.items:
        n_items = sum(1 for _ in study.evaluator.items())
        while items_scored(study, n_items) < args.items:
            if study.run(n_trials=study.count(TrialState.COMPLETE) + 1).interrupted:
                raise SystemExit("interrupted")  # Ctrl-C stops the bench, not just a trial
    else:
        study.run()
    wall = time.perf_counter() - start
    best = study.best_trials(1)[0]
    names = family.expert_tasks
    alone = {  # expert i alone, the start trial, scores task i held-out as the expert
        start_label(t): t
        for t in study.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if start_label(t)
    }
    experts = [alone[f"expert {i} alone"] for i in range(len(names))]
    study.score_heldout([best, *experts])
    held = study.heldout_scores(best)
    own = {n: study.heldout_scores(t)[n] for n, t in zip(names, experts, strict=True)}
    return {
        "search": best.value,
        "heldout": statistics.mean(held[n] for n in names),
        "retention": held[family.retention],
        "normalized": statistics.mean(held[n] / own[n] for n in names),
        "best": f"{best.number} {best.params.get('method')}",
        "trials": study.count(TrialState.COMPLETE),
        "pruned": len(study.pruned()),
        "repeats": len(study.repeats()),
        "wall": wall,
    }


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--items", type=int, default=None, help="budget of scored items, not trials")
    ap.add_argument("--limit", type=int, default=None, help="search items per task (default: all)")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    ap.add_argument("--floor", type=float, default=None, help="retention >= this, for all")
    ap.add_argument(
        "--no-references", action="store_true", help="skip the experts' and simple merges' table"
    )
    args = ap.parse_args()
    for name in args.families:
        family = FAMILIES[name]
        if not args.no_references:
            print(f"\n{name}: experts and simple merges (search / held-out)")
            family.print_scores()
        # seed after seed, every strategy within each: a run cut short still
        # leaves each strategy the same seeds
        rows: dict[str, list[dict]] = {s: [] for s in args.strategies}
        with tempfile.TemporaryDirectory() as tmp:
            for seed in args.seeds:
                for strategy in args.strategies:
                    r = run(family, strategy, seed, Path(tmp), args)
                    rows[strategy].append(r)
                    print(  # each run as it ends, to stderr (the table stays clean)
                        f"  {strategy} seed {seed}: "
                        + ", ".join(f"{k} {r[k]:.3f}" for k in STAT_KEYS)
                        + f", {r['trials']} trials ({r['pruned']} pruned, "
                        + f"{r['repeats']} repeats asked again) in {r['wall']:.0f} s, "
                        + f"best trial {r['best']}",
                        file=sys.stderr,
                        flush=True,
                    )
        budget = f"{args.items} scored items" if args.items else f"{args.trials} trials"
        print(f"\n{name}: {budget}, seeds {args.seeds} (mean ± sd of the best trial)")
        print(
            "| strategy | search | held-out | retention | normalized held-out | trials (pruned) "
            "| trials/h | repeats asked again | best trials |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for strategy, runs in rows.items():
            cells = [spread([r[k] for r in runs]) for k in STAT_KEYS]
            best = ", ".join(r["best"] for r in runs)
            trials = "/".join(f"{r['trials']} ({r['pruned']})" for r in runs)
            per_hour = statistics.mean(r["trials"] / r["wall"] * 3600 for r in runs)
            repeats = "/".join(str(r["repeats"]) for r in runs)
            print(
                f"| {strategy} | "
                + " | ".join(cells)
                + f" | {trials} | {per_hour:.0f} | {repeats} | {best} |"
            )
        sys.stdout.flush()


STAT_KEYS = ("search", "heldout", "retention", "normalized")

if __name__ == "__main__":
    main()
