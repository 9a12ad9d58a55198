#!/usr/bin/env bash
# GPU calibration campaign, one command, everything under OUTDIR (<= 10 min on one H100: the
# measuring steps are capped at 200 s + 360 s; run it again to resume what a cap cut short):
#   1. engine microbenchmarks at Mixtral-8x7B shapes (GEMM, expert FFN over tokens, attention over
#      batch x context, H2D/D2H over sizes pinned/pageable/chunked, CPU expert GEMM);
#   2. end-to-end engine runs at Mixtral-8x7B shapes (LAYERS of its 32 layers, random weights,
#      synthetic acceptance 0.7) for ondemand / overlap / caching / specmoe over a batch x gamma
#      grid, split into training and held-out configurations, REPEATS times (repeats outermost);
#   3. calibrate + validate, if scipy, yaml, pydantic and plotly import here (simpy too for the
#      simulator); else it writes the two commands to run where they do (copy OUTDIR back).
# Measuring needs only torch, numpy and this repository: when specmoe is not installed, a link
# farm under OUTDIR makes `specmoe`, `specmoe.engine` and `specmoe.kernels` importable.
#
#   experiments/gpu_campaign.sh OUTDIR                                        # on the GPU machine
#   DEVICE=cpu PRESET=cpu-small LAYERS=2 QUICK=1 REPEATS=1 experiments/gpu_campaign.sh /tmp/dry
#
# Environment: PYTHON (python3), DEVICE (cuda), PRESET (mixtral-8x7b), LAYERS (4), REPEATS (2),
# HARDWARE (base profile; default from the GPU's name), NAME (profile name), QUICK (1 = tiny grids),
# THREADS (torch threads when DEVICE is a CPU; 1).
set -euo pipefail

OUT=${1:?usage: experiments/gpu_campaign.sh OUTDIR}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
if [[ "$PY" == */* ]]; then PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"; fi
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-mixtral-8x7b}
LAYERS=${LAYERS:-4}
REPEATS=${REPEATS:-2}
QUICK=${QUICK:-0}
mkdir -p "$OUT/traces/e2e" "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
START=$(date +%s)
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/logs/campaign.log"; }

# ---------------------------------------------------------------- make specmoe importable
if ! (cd /tmp && "$PY" -c "import specmoe.engine" 2>/dev/null); then
  PKG="$OUT/_pkg/specmoe"
  rm -rf "$OUT/_pkg" && mkdir -p "$PKG"
  for f in "$REPO"/specmoe/*; do ln -s "$f" "$PKG/$(basename "$f")"; done
  ln -s "$REPO/engine" "$PKG/engine"
  ln -s "$REPO/kernels" "$PKG/kernels"
  ln -s "$REPO/hwprofiles" "$PKG/hwprofiles"
  export PYTHONPATH="$OUT/_pkg${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONDONTWRITEBYTECODE=1

# ---------------------------------------------------------------- the machine
{
  date -u +%FT%TZ
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "triton: not importable"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,power.limit,pcie.link.gen.max,pcie.link.width.max --format=csv
  fi
  git -C "$REPO" rev-parse HEAD 2>/dev/null || true
} > "$OUT/logs/env.txt" 2>&1
log "env: $(tr '\n' ' ' < "$OUT/logs/env.txt")"

if [[ -z "${HARDWARE:-}" ]]; then
  GPU_NAME=cpu
  if [[ "$DEVICE" == cuda* ]] && command -v nvidia-smi >/dev/null; then
    GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  fi
  case "$GPU_NAME" in
    *H100*PCIe*) HARDWARE=h100-pcie ;;
    *H100*NVL*) HARDWARE=h100-nvl ;;
    *H100*) HARDWARE=h100-sxm ;;
    *H200*) HARDWARE=h200-sxm ;;
    *A100*PCIE*40GB*) HARDWARE=a100-pcie-40gb ;;
    *A100*) HARDWARE=a100-sxm-80gb ;;
    *L40S*) HARDWARE=l40s ;;
    *L4*) HARDWARE=l4 ;;
    *) HARDWARE=cpu-local ;;
  esac
fi
log "base hardware profile: $HARDWARE"

# ---------------------------------------------------------------- 1. microbenchmarks
# One trace per kind, so that a kind that fails (e.g. out of memory) costs only its own file.
cd "$REPO"
log "microbenchmarks ($DEVICE, $PRESET shapes)"
timeout 200 "$PY" - "$OUT/traces" "$DEVICE" "$PRESET" "$QUICK" "${THREADS:-1}" <<'PYEOF' 2>&1 | tee -a "$OUT/logs/micro.log" || log "microbenchmarks stopped early; run again to resume"
import sys, time
from pathlib import Path
import torch
sys.path.insert(0, "experiments")
import engine_runs as er
from specmoe.engine.microbench import run_microbench
out, device, preset, quick = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1"
if not device.startswith("cuda"):
    torch.set_num_threads(int(sys.argv[5]))  # as the end-to-end runs: one device, one fingerprint
p = er.PRESETS[preset]
# the quick grid times CPU experts at 3 sizes only: too few for their 3 parameters, so left out
kinds = [k for k in ("gemm", "expert", "attn", "h2d", "d2h", "cpu_expert") if not (quick and k == "cpu_expert")]
for kind in kinds:
    path = out / f"micro-{kind}.jsonl.gz"
    if path.exists():
        continue
    t = time.perf_counter()
    try:
        run_microbench(path, device=device, kinds=[kind], quick=quick, dtype=p["dtype"], hidden=p["hidden"],
                       ffn=p["expert_ffn"], heads=p["heads"], kv_heads=p["kv_heads"],
                       head_dim=p["head_dim"], reps=5 if quick else 10)
        print(f"microbenchmark {kind}: {time.perf_counter() - t:.0f} s -> {path}", flush=True)
    except Exception as exc:  # noqa: BLE001  (keep the other kinds)
        print(f"microbenchmark {kind} FAILED after {time.perf_counter() - t:.0f} s: "
              f"{type(exc).__name__}: {exc}", flush=True)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
PYEOF

# ---------------------------------------------------------------- 2. end-to-end runs
# SPLIT:POLICIES:BATCHES:GAMMAS rows; speculative policies take every gamma, N = 2 draft experts.
if [[ "$QUICK" == "1" ]]; then
  GRID=(train:ondemand,caching:1,2,3:0 train:specmoe:2:2 heldout:ondemand,overlap:4:0 heldout:specmoe:3:2)
  MAX_NEW=6; PROMPT=8
else
  GRID=(train:ondemand,caching:1,4,16,64:0 train:specmoe:4,32:2
        heldout:ondemand,overlap,caching:2,8,32:0 heldout:specmoe:1,8,32:2,4)
  MAX_NEW=24; PROMPT=64
fi
ARGS=()
for row in "${GRID[@]}"; do ARGS+=(--grid "$row"); done
# On a CPU device one torch thread (a dry run on a shared machine); a GPU run keeps torch's default
[[ "$DEVICE" == cuda* ]] || ARGS+=(--threads "${THREADS:-1}")
log "end-to-end runs: ${GRID[*]} x $REPEATS repeats"
status=0
timeout 360 "$PY" experiments/engine_runs.py --out "$OUT/traces/e2e" "${ARGS[@]}" \
    --preset "$PRESET" --layers "$LAYERS" --device "$DEVICE" --draft-experts 2 --resident-experts 2 \
    --synthetic-acceptance 0.7 --prompt-len "$PROMPT" --max-new-tokens "$MAX_NEW" \
    --repeats "$REPEATS" 2>&1 | tee -a "$OUT/logs/e2e.log" || status=$?
[[ $status -eq 0 ]] || log "end-to-end runs stopped early (status $status); run again to resume"
log "measured: $(find "$OUT/traces/e2e" -name '*.jsonl.gz' | wc -l) end-to-end traces"

# ---------------------------------------------------------------- 3. calibrate and validate
# Paths relative to OUTDIR, so the written commands work wherever OUTDIR is copied to.
cd "$OUT"
NAME=${NAME:-$HARDWARE-campaign}
CAL=(calibrate traces/micro-*.jsonl.gz traces/e2e/train/*.jsonl.gz --hardware "$HARDWARE"
     -o "$NAME.yaml" --html "calibration_$NAME.html" --min-samples 3)
# the quick grid's copies come in too few sizes to separate per-copy time from bandwidth
[[ "$QUICK" != "1" ]] || CAL+=(--fix transfer_setup_us)
VAL=(validate traces/e2e/heldout/*.jsonl.gz --hardware "$NAME.yaml" --markdown "validation_$NAME.md")
{ echo "cd OUTDIR"; echo "specmoe ${CAL[*]}"; echo "specmoe ${VAL[*]}"; } > fit_commands.txt
if "$PY" -c "import scipy, yaml, pydantic, plotly" 2>/dev/null; then
  log "calibrating"
  "$PY" -m specmoe.app.cli.main "${CAL[@]}" 2>&1 | tee "calibration_$NAME.md"
  log "validating"
  "$PY" -m specmoe.app.cli.main "${VAL[@]}" 2>&1 | tee -a logs/validate.log
else
  log "scipy/yaml/pydantic/plotly not importable here: copy $OUT back and run fit_commands.txt there"
  cat fit_commands.txt
fi
log "done in $(( $(date +%s) - START )) s"
