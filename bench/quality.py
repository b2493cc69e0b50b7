"""Does a search find clearly better merges? Strategies side by side, same budget.

On each hard benchmark family (``bench/families.py``), each search strategy
runs the same study (every method that fits, the family's fact or skill
tasks plus retention) for the same number of trials, once per sampler seed;
the best trial is scored on the held-out splits. Printed per family: the
experts and the simple merges (no search), then each strategy's mean and
spread over the seeds of the best trial's search score, held-out mean over
the experts' tasks, retention, and normalized held-out (each task's held-out
score over its own expert's, averaged). ``--floor 0.9`` gives every
strategy the constraint ``<family>_retention >= 0.9``.

    python bench/quality.py [--families knowledge skills] [--seeds 0 1 2]
                            [--trials 60] [--strategies random tpe] [--floor 0.9]

Strategies are study-file settings (``STRATEGIES``); a new search default is
one more entry, measured against the others in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from families import FAMILIES
from family import Family
from optuna.trial import TrialState

from optimizer.config.study_config import StudyConfig
from optimizer.study.study import Study
from optimizer.study.worker import start_label

# name -> (study-file keys, objective keys): what each strategy changes
STRATEGIES: dict[str, tuple[dict, dict]] = {
    "random": ({"sampler": {"name": "random"}}, {}),
    "tpe": ({}, {}),  # the study file's defaults
    "staged": ({"search": "staged"}, {}),
    "staged-wilcoxon": ({"search": "staged"}, {"pruner": {"name": "wilcoxon", "chunk": 16}}),
}


def run(
    family: Family, strategy: str, seed: int, trials: int, folder: Path, floor: float | None
) -> dict:
    top, objective = STRATEGIES[strategy]
    if floor is not None:
        objective = {**objective, "constraints": [f"{family.retention} >= {floor}"]}
    sampler = {**{"name": "tpe"}, **top.get("sampler", {}), "seed": seed}
    path = family.study_file(
        folder,
        f"{family.name}-{strategy}-{seed}",
        {"batch_size": 16, **objective},
        **{**top, "sampler": sampler, "n_trials": trials, "seed": 0},
    )
    study = Study(StudyConfig.from_yaml(path))
    study.run()
    best = study.best_trials(1)[0]
    names = [family.task(e.name) for e in family.experts()]
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
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    ap.add_argument("--floor", type=float, default=None, help="retention >= this, for all")
    args = ap.parse_args()
    for name in args.families:
        family = FAMILIES[name]
        print(f"\n{name}: experts and simple merges (search / held-out)")
        family.print_scores()
        print(f"\n{name}: {args.trials} trials, seeds {args.seeds} (mean ± sd of the best trial)")
        print("| strategy | search | held-out | retention | normalized held-out | best trials |")
        print("|---|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            for strategy in args.strategies:
                rows = []
                for seed in args.seeds:
                    rows.append(run(family, strategy, seed, args.trials, Path(tmp), args.floor))
                    r = rows[-1]  # each run as it ends, to stderr (the table stays clean)
                    print(
                        f"  {strategy} seed {seed}: "
                        + ", ".join(f"{k} {r[k]:.3f}" for k in STAT_KEYS)
                        + f", best trial {r['best']}",
                        file=sys.stderr,
                        flush=True,
                    )
                cells = [spread([r[k] for r in rows]) for k in STAT_KEYS]
                best = ", ".join(r["best"] for r in rows)
                print(f"| {strategy} | " + " | ".join(cells) + f" | {best} |")
                sys.stdout.flush()


STAT_KEYS = ("search", "heldout", "retention", "normalized")

if __name__ == "__main__":
    main()
