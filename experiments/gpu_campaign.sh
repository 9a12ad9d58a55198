#!/usr/bin/env bash
# GPU campaign: one command, at most BUDGET seconds (470 by default: under 8 minutes on an H200),
# everything under OUTDIR, needing only torch, triton and numpy besides this repository. Each step
# is its own process under `timeout` (a step that fails or runs out of time costs only its own
# output; later steps still run, with whatever budget is left):
#   1. env       interpreter, torch/triton/numpy versions, GPU, imports of specmoe.engine/kernels
#   2. checks    experiments/gpu_checks.py: compiled kernels vs references at Mixtral shapes, one
#                Mixtral layer kernels vs torch, engine CUDA = CPU tokens and bytes, kernels
#                active, no host sync in draft layers/attention, pinned arena, moe_align at scale;
#      tests     the CUDA test files with compiled kernels, if pytest and hypothesis are there
#   3. kernels   bench_kernels.py (fused MoE at 1..64 and 2048 tokens/expert, attention): HBM and
#                bf16 fractions against the detected GPU's datasheet; engine microbenchmarks
#                (GEMM, fused MoE by tokens, cache attention) -> traces/micro-ops.jsonl.gz
#   4. copies    H2D/D2H over sizes, pinned/pageable, chunked -> traces/micro-copy.jsonl.gz
#   5. e2e       engine runs at Mixtral-8x7B shape (LAYERS of 32, random weights drawn on the GPU,
#                synthetic acceptance 0.7): ondemand/caching/specmoe x batches x gamma 2/4
#                -> traces/e2e/{train,heldout}/*.jsonl.gz (resumes: existing traces are kept)
#   6. tune      experiments/quick_tune.py: ~12 tile configs at decode sizes -> tune/<device>.json
#                (copy into kernels/configs/ to use) and tune/quick_tune.json
#   then campaign_summary.py prints the figures against DESIGN.md's targets (summary.json).
#
#   experiments/gpu_campaign.sh OUTDIR                 # on the GPU machine
#   DRY=1 experiments/gpu_campaign.sh OUTDIR           # CPU dry run: same steps, tiny shapes,
#                                                      # kernels under TRITON_INTERPRET=1
# Environment: PYTHON (python3), BUDGET (470 s), LAYERS (2), DRY (0).
# Python runs with PYTHONSAFEPATH=1 from OUTDIR/run, never from the repository root (whose
# specmoe/ would shadow an installed package); where specmoe is not installed, a link farm under
# OUTDIR makes specmoe, specmoe.engine and specmoe.kernels importable from this checkout.
set -uo pipefail

OUT=${1:?usage: experiments/gpu_campaign.sh OUTDIR}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
if [[ "$PY" == */* ]]; then PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"; fi
DRY=${DRY:-0}
BUDGET=${BUDGET:-470}
LAYERS=${LAYERS:-2}
mkdir -p "$OUT/traces/e2e" "$OUT/logs" "$OUT/tune" "$OUT/run"
OUT=$(cd "$OUT" && pwd)
START=$(date +%s)
X="$REPO/experiments"
export PYTHONSAFEPATH=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
if [[ "$DRY" == "1" ]]; then export TRITON_INTERPRET=1; else unset TRITON_INTERPRET; fi
cd "$OUT/run"

log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/logs/campaign.log"; }

# step NAME CAP CMD...: run CMD under timeout min(CAP, what is left of BUDGET), log to logs/NAME.log
step() {
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  (( cap > left )) && cap=$left
  if (( cap < 5 )); then log "$name: skipped, budget spent"; echo -e "$name\tskipped\t0" >> "$OUT/logs/steps.tsv"; return; fi
  local t0=$(date +%s) rc=0
  log "$name: start (cap ${cap} s)"
  timeout --kill-after=10 "$cap" "$@" > "$OUT/logs/$name.log" 2>&1 || rc=$?
  local dt=$(( $(date +%s) - t0 )) what=ok
  (( rc == 124 || rc == 137 )) && what=timeout
  (( rc != 0 && rc != 124 && rc != 137 )) && what="failed($rc)"
  log "$name: $what after ${dt} s"
  echo -e "$name\t$what\t$dt" >> "$OUT/logs/steps.tsv"
  [[ "$what" == ok ]] || tail -n 15 "$OUT/logs/$name.log" | sed "s/^/    $name| /"
}

# ---------------------------------------------------------------- make specmoe importable
if ! "$PY" -c "import specmoe.engine, specmoe.kernels" 2>/dev/null; then
  PKG="$OUT/_pkg/specmoe"
  rm -rf "$OUT/_pkg" && mkdir -p "$PKG"
  for f in "$REPO"/specmoe/*; do ln -s "$f" "$PKG/$(basename "$f")"; done
  ln -s "$REPO/engine" "$PKG/engine"
  ln -s "$REPO/kernels" "$PKG/kernels"
  ln -s "$REPO/hwprofiles" "$PKG/hwprofiles"
  export PYTHONPATH="$OUT/_pkg${PYTHONPATH:+:$PYTHONPATH}"
fi
: > "$OUT/logs/steps.tsv"
log "campaign: repo $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), DRY=$DRY, budget ${BUDGET} s"

# ---------------------------------------------------------------- 1. environment
step env 20 "$PY" -c "
import sys, torch, triton, numpy, specmoe.engine, specmoe.kernels
from specmoe.kernels import _runtime as rt
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'triton', triton.__version__, 'numpy', numpy.__version__, 'interpreter', rt.interpreting())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('gpu', p.name, 'sms', p.multi_processor_count, 'mem', p.total_memory,
          'l2', getattr(p, 'L2_cache_size', None))
elif '$DRY' != '1':
    sys.exit('no CUDA device (DRY=1 for a CPU dry run)')
"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit,pcie.link.gen.max,pcie.link.width.max --format=csv >> "$OUT/logs/env.log" 2>&1
fi
cat "$OUT/logs/env.log"

# ---------------------------------------------------------------- 2. correctness
if [[ "$DRY" == "1" ]]; then
  step checks 60 "$PY" "$X/gpu_checks.py" --dry --out "$OUT/checks.json"
else
  step checks 80 "$PY" "$X/gpu_checks.py" --out "$OUT/checks.json"
  if "$PY" -c "import pytest, hypothesis" 2>/dev/null; then
    step tests 35 "$PY" -m pytest -q -x -p no:cacheprovider --rootdir "$REPO" \
      "$REPO/tests/test_engine_cuda.py" "$REPO/tests/test_engine_kernels.py" \
      "$REPO/tests/test_kernels_ops.py" "$REPO/tests/test_kernels_moe.py"
  else
    log "tests: pytest/hypothesis not importable here; gpu_checks.py covered the CUDA paths"
  fi
fi

# ---------------------------------------------------------------- 3. kernel benchmarks
if [[ "$DRY" == "1" ]]; then
  step kernels 60 "$PY" "$X/bench_kernels.py" --tiny --kernels moe,attention --out "$OUT/kernels.json"
  step micro 30 "$PY" -m specmoe.engine.microbench "$OUT/traces/micro-ops.jsonl.gz" --device cpu \
    --quick --dtype float32 --kinds gemm,moe,attn --reps 2
  step vs_tables 15 "$PY" "$X/engine_vs_tables.py" "$OUT/traces/micro-ops.jsonl.gz" \
    --tables "$REPO/hwprofiles/tables/h100-sxm-vllm.npz" -o "$OUT/engine_vs_tables.md"
else
  step kernels 60 "$PY" "$X/bench_kernels.py" --kernels moe,attention --models mixtral-8x7b \
    --tokens-per-expert 1,2,4,8,16,32,64,2048 --reps 10 --out "$OUT/kernels.json"
  step micro 65 "$PY" -m specmoe.engine.microbench "$OUT/traces/micro-ops.jsonl.gz" --device cuda \
    --kinds gemm,moe,attn --reps 10 --launches 10
  # the engine's kernels row for row against vLLM's measured ones on this GPU (issue 13, item 6)
  step vs_tables 15 "$PY" "$X/engine_vs_tables.py" "$OUT/traces/micro-ops.jsonl.gz" \
    -o "$OUT/engine_vs_tables.md"
fi

# ---------------------------------------------------------------- 4. copies
if [[ "$DRY" == "1" ]]; then
  step copies 30 "$PY" -m specmoe.engine.microbench "$OUT/traces/micro-copy.jsonl.gz" --device cpu \
    --quick --kinds h2d,d2h --reps 2
else
  step copies 40 "$PY" -m specmoe.engine.microbench "$OUT/traces/micro-copy.jsonl.gz" --device cuda \
    --kinds h2d,d2h --reps 5
fi

# ---------------------------------------------------------------- 5. end-to-end runs
# SPLIT:POLICIES:BATCHES:GAMMAS; speculative policies take every gamma, N = 2 draft experts.
if [[ "$DRY" == "1" ]]; then
  E2E=(--preset cpu-small --layers 2 --device cpu --threads 1 --prompt-len 8 --max-new-tokens 4
       --grid train:ondemand,caching:1,2:0 --grid train:specmoe:2:2 --grid heldout:specmoe:1:4)
else
  E2E=(--preset mixtral-8x7b --layers "$LAYERS" --device cuda --prompt-len 32 --max-new-tokens 16
       --grid train:ondemand,caching:1,16,128:0 --grid train:specmoe:1,16,128:2,4
       --grid heldout:ondemand,caching:64:0 --grid heldout:specmoe:64:4)
fi
step e2e 120 "$PY" "$X/engine_runs.py" --out "$OUT/traces/e2e" "${E2E[@]}" --draft-experts 2 \
  --resident-experts 2 --synthetic-acceptance 0.7 --repeats 1

# ---------------------------------------------------------------- 6. decode-size quick tune
if [[ "$DRY" == "1" ]]; then
  step tune 30 "$PY" "$X/quick_tune.py" --out "$OUT/tune" --dry
else
  step tune 50 "$PY" "$X/quick_tune.py" --out "$OUT/tune"
fi

# ---------------------------------------------------------------- summary
"$PY" "$X/campaign_summary.py" "$OUT" | tee "$OUT/summary.txt"
log "done in $(( $(date +%s) - START )) s; steps: $(cut -f1,2 "$OUT/logs/steps.tsv" | tr '\t\n' ': ')"
echo "Calibrate where the core's dependencies are installed (copy OUTDIR back):"
echo "  specmoe calibrate $OUT/traces/micro-*.jsonl.gz $OUT/traces/e2e/train/*.jsonl.gz --hardware h200-sxm -o h200-campaign.yaml"
echo "  specmoe validate $OUT/traces/e2e/heldout/*.jsonl.gz --hardware h200-campaign.yaml"
! grep -qv $'\tok\t' "$OUT/logs/steps.tsv"
