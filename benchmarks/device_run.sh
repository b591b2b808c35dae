#!/usr/bin/env bash
# The one-shot GPU session that produced benchmarks/results/*gpu* and the GPU evidence tables.
# Run from the repository root on a CUDA machine with torch + triton; wheels for the peers (SpikingJelly,
# snnTorch, loguru) in .whl/ (see the device notes); the evidence data bundle in .evidence_data/
# (made here by `python benchmarks/evidence/make_bundle.py`). Results are packed into $OUT/results.tgz.
set -u
export PYTHONUNBUFFERED=1
RES=/tmp/ms_results; mkdir -p "$RES/evidence"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:.
fi
export PYTHONPATH="${PYTHONPATH:-.}:."
nvidia-smi -L | tee "$RES/gpu.txt"
# 1. Triton kernels against the reference functions, then timings against the HBM floor and SpikingJelly.
OUT="$RES" timeout "${GPU_CHECK_SECONDS:-170}" python3 benchmarks/gpu_check.py --quick > "$RES/gpu_check.log" 2>&1
check=$?
echo "gpu_check exit $check" | tee -a "$RES/gpu_check.log"
# 2. The evidence tables. Use the Triton kernels only if they passed the equivalence checks.
[ "$check" -eq 0 ] || export MULTISPIKE_AUTO_BACKEND=torch
timeout "${EVIDENCE_TIMEOUT:-390}" python3 benchmarks/evidence/run_all.py --profile gpu --data .evidence_data \
  --out "$RES/evidence" --max-seconds "${EVIDENCE_SECONDS:-330}" --hard-seconds "${EVIDENCE_HARD_SECONDS:-370}" \
  ${MS_COMMIT:+--commit "$MS_COMMIT"} > "$RES/evidence.log" 2>&1
echo "evidence exit $?" | tee -a "$RES/evidence.log"
tar czf "${OUT:-/tmp}/results.tgz" -C "$RES" .
ls -la "$RES" "$RES/evidence"
