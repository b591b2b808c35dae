#!/usr/bin/env bash
# One-shot GPU session for issue 19: runs benchmarks/gpu_checks.py within 5 minutes and packs $OUT/gpu_checks.json.
# From the repository root on a CUDA machine with torch + triton. Optional peer wheels (SpikingJelly) in .whl/.
set -u
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
OUT="${OUT:-/tmp/gpu_checks_out}"; mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/gpu.txt"
timeout "${GPU_CHECKS_HARD_S:-300}" python3 benchmarks/gpu_checks.py --budget-s "${GPU_CHECKS_BUDGET_S:-285}" \
  --out "$OUT/gpu_checks.json" 2>&1 | tee "$OUT/gpu_checks.log"
echo "gpu_checks exit ${PIPESTATUS[0]}" | tee -a "$OUT/gpu_checks.log"
