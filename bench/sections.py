"""The slower sections of bench/materialize.py: mergekit runs, study memory, trial overhead."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import run_child, smollm_zoo, table, widened_zoo
from merge_vs_mergekit import config as merge_config  # noqa: I001 - bench-local module


def mergekit_speedup(n_experts: int, ours: dict[str, float], methods: list[str]) -> None:
    """`mergekit-yaml` wall time for the same merge against our time per candidate."""
    bindir = Path(sys.executable).parent
    mergekit = shutil.which("mergekit-yaml", path=str(bindir)) or shutil.which("mergekit-yaml")
    if mergekit is None:
        print("\nmergekit: skipped (pip install 'mergeopt[mergekit]')")
        return
    base, experts = smollm_zoo(n_experts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            if method not in ours:
                continue
            cfg = merge_config(method, base, experts)
            path = Path(tmp) / f"{method}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            wall, _, _ = run_child([mergekit, str(path), str(Path(tmp) / method)])
            shutil.rmtree(Path(tmp) / method, ignore_errors=True)
            rows.append(
                [method, f"{ours[method] * 1e3:.0f}", f"{wall:.1f}", f"{wall / ours[method]:.0f}x"]
            )
    print(f"\nmergekit-yaml, same merge, {n_experts} experts (one run each):")
    print(table(["method", "mergeopt ms/candidate", "mergekit s", "speed-up"], rows))


STUDY_METHODS = ["della", "breadcrumbs", "ties", "model_stock"]


def study_memory(n_experts: int, wide_experts: int = 2) -> None:
    """Peak RSS of `mergeopt run` against (experts + 2.5) x model: SmolLM2-135M +
    ``n_experts`` with and without the per-study caches, and the architecture
    widened to ~1B + ``wide_experts`` without them (with them, 1 + 0.5 models
    per expert: more than this machine's 24 GiB at that size)."""
    small = smollm_zoo(n_experts)
    wide = widened_zoo(wide_experts)
    runs = [("SmolLM2-135M", *small, True), ("SmolLM2-135M", *small, False)]
    runs.append(("~1B (1536/4096)", *wide, False))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runtime_probe = Path(tmp) / "probe.py"
        runtime_probe.write_text(
            "import torch, transformers, lm_eval, optuna\n"
            "from optimizer.evaluate import make_evaluator\n"
            "from optimizer.study.study import objectives_for\n"
            "from optimizer.config.study_config import StudyConfig\n"
            "import sys\n"
            "cfg = StudyConfig.from_yaml(sys.argv[1])\n"
            "make_evaluator(cfg.backend, objectives_for(cfg), cfg.limit, cfg.num_fewshot)\n"
        )
        runtime = 0
        for k, (label, base, experts, cache) in enumerate(runs):
            model_bytes = (base / "model.safetensors").stat().st_size
            study = {
                "study": f"mem-{k}",
                "storage": f"sqlite:///{tmp}/mem-{k}.db",
                "base_model": str(base),
                "models": [str(e) for e in experts],
                "methods": STUDY_METHODS,
                "objective": {"tasks": [{"task": "demo_kinds"}], "limit": 8, "batch_size": 8},
                "n_trials": len(STUDY_METHODS),
                "cache_ranks": cache,
                "device": "cpu",
            }
            path = Path(tmp) / f"mem-{k}.yaml"
            path.write_text(yaml.safe_dump(study))
            if not runtime:
                _, runtime, _ = run_child([sys.executable, str(runtime_probe), str(path)])
            bindir = Path(sys.executable).parent
            wall, rss, _ = run_child([str(bindir / "mergeopt"), "run", str(path), "--no-export"])
            target = (len(experts) + 2.5) * model_bytes
            rows.append(
                [
                    f"{label}, {model_bytes / 1e9:.2f} GB",
                    str(len(experts)),
                    f"cache_ranks: {str(cache).lower()}",
                    f"{rss / 1e9:.2f}",
                    f"{rss / model_bytes:.2f}",
                    f"{(rss - runtime) / model_bytes:.2f}",
                    f"{target / 1e9:.2f}",
                    "yes" if rss <= target else "NO",
                ]
            )
    print(
        f"\nstudy peak RSS, trials {', '.join(STUDY_METHODS)}; runtime alone (torch, "
        f"transformers, lm-eval, tasks built): {runtime / 1e9:.2f} GB"
    )
    header = ["model", "experts", "run", "peak GB", "x model", "x model w/o runtime"]
    print(table([*header, "target GB", "met"], rows))


def trial_overhead(n_trials: int = 6) -> None:
    """Share of a demo trial's wall time outside materialization and forward passes."""
    import torch

    from optimizer.config.study_config import StudyConfig
    from optimizer.demo.zoo import default_workdir, prepare
    from optimizer.study.study import Study

    demo_study = prepare(default_workdir(), print)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = StudyConfig.from_yaml(demo_study, storage=f"sqlite:///{tmp}/overhead.db")
        study = Study(cfg)
        study.load_models()
        model = study.merger.model
        spent = {"forward": 0.0}
        inner = model.forward

        def timed_forward(*a, **k):
            start = time.perf_counter()
            out = inner(*a, **k)
            spent["forward"] += time.perf_counter() - start
            return out

        model.forward = timed_forward
        # lm-eval turns each batch's logits into log-probabilities over the whole
        # vocabulary: model arithmetic, not bookkeeping, so it is reported apart
        log_softmax = torch.nn.functional.log_softmax

        def timed_log_softmax(*a, **k):
            start = time.perf_counter()
            out = log_softmax(*a, **k)
            spent["log_softmax"] += time.perf_counter() - start
            return out

        spent["log_softmax"] = 0.0
        torch.nn.functional.log_softmax = timed_log_softmax
        start = time.perf_counter()
        try:
            with torch.no_grad():
                study.run(n_trials)
        finally:
            torch.nn.functional.log_softmax = log_softmax
        wall = time.perf_counter() - start
        trials = study.study.get_trials()
        mat = sum(t.user_attrs["timing"]["materialize"] for t in trials if "timing" in t.user_attrs)
        ev = sum(t.user_attrs["timing"]["evaluate"] for t in trials if "timing" in t.user_attrs)
    fwd, lsm = spent["forward"], spent["log_softmax"]
    rest = wall - mat - ev
    overhead = wall - mat - fwd - lsm
    rows = [
        ["materialize", f"{mat / n_trials:.2f}", f"{100 * mat / wall:.1f}%"],
        ["model forward passes", f"{fwd / n_trials:.2f}", f"{100 * fwd / wall:.1f}%"],
        [
            "log-softmax of the logits (lm-eval)",
            f"{lsm / n_trials:.2f}",
            f"{100 * lsm / wall:.1f}%",
        ],
        [
            "lm-eval bookkeeping (requests, tokens, metrics)",
            f"{(ev - fwd - lsm) / n_trials:.2f}",
            f"{100 * (ev - fwd - lsm) / wall:.1f}%",
        ],
        ["optuna, storage, logging", f"{rest / n_trials:.3f}", f"{100 * rest / wall:.1f}%"],
        [
            "overhead: the last two (target <= 5%)",
            f"{overhead / n_trials:.2f}",
            f"{100 * overhead / wall:.1f}%",
        ],
    ]
    print(f"\ndemo study, {n_trials} trials, {wall:.1f} s wall ({wall / n_trials:.2f} s/trial):")
    print(table(["part", "s/trial", "share"], rows))
