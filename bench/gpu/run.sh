#!/usr/bin/env bash
# Run ON the lent GPU machine, in the repository root, with .whl carried (see prepare_wheels.sh):
#   device run  command="bash bench/gpu/run.sh"  carry=[".whl"]  timeout_s=600
# Installs the carried wheels into /tmp/site, then writes every figure the project needs to $OUT:
#   gpu_suite.json (plain 480p/720p x 50 steps+CFG / 4 steps, each speed option with PSNR/SSIM, memory caps),
#   env.txt (GPU, driver, versions). Fill BENCHMARKS.md from them.
set -uo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
{ nvidia-smi; python3 -c "import torch, diffusers, torchao; print(torch.__version__, diffusers.__version__, torchao.__version__)"; } > "$OUT/env.txt" 2>&1
QUICK=${QUICK:-0}
timeout 560 python3 - "$OUT/gpu_suite.json" "$QUICK" <<'PY' 2>&1 | tail -40
import json, sys
from bench.gpu_suite import run
from skuvid.settings import Settings
report = run(Settings(device="cuda"), quick=sys.argv[2] == "1")
open(sys.argv[1], "w").write(json.dumps(report, indent=1))
print(json.dumps(report)[:3000])
PY
