"""Export a study's trial as a model folder, and prove it is the trial's model.

The trial's merge config is re-materialized by the one-shot merge engine
(exactly as ``mergeopt merge`` would), the folder is reloaded from disk and
scored again, and the score must match the one the study recorded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState

from optimizer.config.merge_config import MergeConfig
from optimizer.engine.merge import run_merge
from optimizer.errors import ConfigError, MergeoptError
from optimizer.study.constraints import broken, feasible
from optimizer.study.pruning import PRUNED, score_every_item


class ExportMismatch(MergeoptError):
    """The exported folder does not score what the study recorded."""


class InfeasibleStudy(ConfigError):
    """No trial meets the study's constraints: there is no best merge to export."""


@dataclass
class ExportResult:
    out: Path
    trial: int
    study_scores: dict[str, float]
    reloaded_scores: dict[str, float] | None
    broken: list[str] = field(default_factory=list)  # constraints the trial breaks


def pick_trial(study, number: int | None) -> FrozenTrial:
    trials = study.study.get_trials(deepcopy=False)
    if number is not None:
        match = [t for t in trials if t.number == number]
        if not match:
            raise ConfigError(f"study {study.cfg.name!r} has no trial {number}")
        if match[0].state != TrialState.COMPLETE:
            raise ConfigError(
                f"trial {number} is {match[0].state.name}, not COMPLETE; pick a completed trial"
            )
        pruned = match[0].user_attrs.get(PRUNED)
        if pruned:
            raise ConfigError(
                f"trial {number} was pruned after {pruned['items']} of {pruned['of']} items: "
                "its score is a partial mean, so it is never exported; pick a trial scored "
                "on every item (mergeopt status lists the best)"
            )
        return match[0]
    best = study.best_trials(1)
    if not best:
        raise ConfigError(f"study {study.cfg.name!r} has no completed trial yet; run it first")
    if not feasible(best[0]):
        raise InfeasibleStudy(
            f"no trial of study {study.cfg.name!r} meets objective.constraints; the "
            f"closest, trial {best[0].number}, breaks {', '.join(broken(best[0]))}. Run more "
            f"trials, relax the constraints, or export it anyway with --trial {best[0].number}"
        )
    return best[0]


def export_trial(
    study,
    out: Path,
    number: int | None = None,
    force: bool = False,
    verify: bool = True,
    tolerance: float = 1e-6,
) -> ExportResult:
    trial = pick_trial(study, number)
    config = trial.user_attrs["config"]
    device = "cuda" if study.cfg.device.startswith("cuda") else "cpu"
    run_merge(MergeConfig.from_dict(config), out, force=force, device=device)
    recorded = dict(trial.user_attrs.get("scores", {}))
    (out / "mergeopt_trial.json").write_text(
        json.dumps(
            {
                "study": study.cfg.name,
                "trial": trial.number,
                "values": trial.values,
                "search_scores": recorded,
                "heldout_scores": study.heldout_scores(trial),
                "constraints": {
                    text: {"violation": v, "met": v <= 0} for text, v in trial.constraints.items()
                },
            },
            indent=2,
        )
        + "\n"
    )
    reloaded = None
    if verify:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from optimizer.evaluate import make_evaluator

        trust = study.cfg.trust_remote_code
        # in the dtype the trial was scored in: a float32 export of a study scored
        # in bfloat16 rounds to the very model the study scored
        model = AutoModelForCausalLM.from_pretrained(
            out, dtype=study.scored_dtype(), use_safetensors=True, trust_remote_code=trust
        ).eval()
        tok = AutoTokenizer.from_pretrained(out, trust_remote_code=trust)
        evaluator = make_evaluator(
            study.cfg.backend, study.objectives, study.cfg.limit, study.cfg.num_fewshot
        )
        evaluator.attach(model, tok, study.cfg.batch_size)
        reloaded = score_every_item(evaluator, study.plan, study.objectives)
        bad = {
            k: (recorded[k], reloaded.get(k))
            for k in recorded
            if reloaded.get(k) is None
            or not math.isclose(recorded[k], reloaded[k], abs_tol=tolerance)
        }
        if bad:
            raise ExportMismatch(
                f"the exported folder {out} scores {bad} (study, reloaded): it is not the "
                f"model trial {trial.number} was scored on"
            )
    return ExportResult(out, trial.number, recorded, reloaded, broken(trial))
