"""The ``mergeopt`` command line."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from methods import METHODS


def methods_help() -> str:
    """Every registered method with its parameters, from the registry."""
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
    return parser


def cmd_merge(args: argparse.Namespace) -> int:
    from optimizer.merge import run_merge
    from optimizer.merge_config import MergeConfig

    cfg = MergeConfig.from_yaml(args.config)
    if args.seed is not None:
        cfg.seed = args.seed
    result = run_merge(
        cfg,
        args.out,
        force=args.force,
        device=args.device,
        allow_pickle=args.allow_pickle,
        max_shard_bytes=args.shard_size
        if isinstance(args.shard_size, int)
        else parse_size(args.shard_size),
        show_progress=not args.quiet and sys.stderr.isatty(),
    )
    print(
        f"merged {result.tensors} tensors with {cfg.method.name} into {result.out} "
        f"({result.shards} shard(s), {result.seconds:.1f} s)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from optimizer.errors import MergeoptError

    args = build_parser().parse_args(argv)
    handlers = {"merge": cmd_merge}
    try:
        return handlers[args.command](args)
    except MergeoptError as e:
        print(f"mergeopt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mergeopt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
