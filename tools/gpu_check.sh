#!/usr/bin/env bash
# tools/gpu_check.sh: everything the CPU cannot check, in one run on a CUDA machine, with one report at the end.
#
# Steps (each under its own time limit, all of them under --budget seconds):
#   probe   what torch sees: device, compute capability, bf16, memory        -> probe.json
#   cells   every notebook's `#| cuda` cell (19_bench's GPU benchmark)       -> cuda_cells.json
#   tests   tests/test_cuda.py: bf16, fp16 + grad scaler, fused AdamW, torch.compile, 1-process NCCL, KV cache
#                                                                             -> cuda_tests.xml
#   bench   minimind_bench --preset minimind2-small, ours and the MiniMind-style baseline side by side
#           (tokens/s, MFU, peak memory)                                      -> bench.json, bench.md
#   report  report.md and report.json from all of the above (always written, also after a failed step)
#
# Usage: tools/gpu_check.sh [--out DIR] [--python PY] [--only STEPS] [--skip STEPS] [--budget SECONDS] [--dry-run]
# It needs no install: the repository is put on PYTHONPATH. Where fastcore is missing (a bare GPU image), wheels in
# .whl/ beside this repository are installed into a temporary folder first (the device tool carries them: `carry .whl`).
# Exit codes: 0 every step passed, 1 a step failed, 2 a bad flag, 3 no CUDA device (the report says so).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ALL_STEPS=(probe cells tests bench report)
OUT=gpu-check
PY=${PYTHON:-python3}
ONLY="" SKIP="" BUDGET=470 DRY=0

usage() { sed -n '2,/^set /p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "gpu_check.sh: $*" >&2; exit 2; }
known_steps() {   # every name in the comma list $1 is a step, else one line naming the flag and the name
  local flag=$1 list=$2 name
  IFS=, read -ra names <<< "$list"
  [ "${#names[@]}" -gt 0 ] || die "$flag needs a comma list of steps: ${ALL_STEPS[*]}"
  for name in "${names[@]}"; do
    [[ " ${ALL_STEPS[*]} " == *" $name "* ]] || die "$flag: unknown step '$name'; the steps are: ${ALL_STEPS[*]}"
  done
}

while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT=$2; shift 2 ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PY=$2; shift 2 ;;
    --only) [ $# -ge 2 ] || die "--only needs a comma list of steps"; known_steps --only "$2"; ONLY=$2; shift 2 ;;
    --skip) [ $# -ge 2 ] || die "--skip needs a comma list of steps"; known_steps --skip "$2"; SKIP=$2; shift 2 ;;
    --budget) [ $# -ge 2 ] && [[ $2 =~ ^[0-9]+$ ]] && [ "$2" -ge 60 ] || die "--budget needs whole seconds, at least 60 (got '${2:-}')"
              BUDGET=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) die "unknown flag '$1' (see --help)" ;;
  esac
done

wanted() {   # is step $1 to run?
  [ -n "$ONLY" ] && [[ ",$ONLY," != *",$1,"* ]] && return 1
  [[ ",$SKIP," == *",$1,"* ]] && return 1
  return 0
}

mkdir -p "$OUT" || die "--out $OUT: cannot create the folder"
OUT=$(cd "$OUT" && pwd)
[ "$DRY" = 1 ] || rm -f "$OUT"/steps.jsonl "$OUT"/report.md "$OUT"/report.json
REPORT=("$PY" "$ROOT/tools/gpu_report.py")
START=$SECONDS

# step NAME LIMIT COMMAND...: run it (its log in OUT/NAME.log) under min(LIMIT, what is left of the budget), record it
FAILED=0
step() {
  local name=$1 limit=$2; shift 2
  wanted "$name" || return 0
  local left=$((BUDGET - (SECONDS - START)))
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$DRY" = 1 ]; then printf '%-7s (at most %3d s)  %s\n' "$name" "$limit" "$*"; return 0; fi
  if [ "$limit" -lt 10 ]; then
    echo "== $name: skipped, the --budget of $BUDGET s is spent"
    "${REPORT[@]}" record "$OUT" "$name" 124 0; FAILED=1; return 0
  fi
  echo "== [$(date +%H:%M:%S)] $name (at most $limit s)"
  local t0=$SECONDS rc
  (cd "$ROOT" && timeout --kill-after 10 "$limit" "$@") 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  "${REPORT[@]}" record "$OUT" "$name" "$rc" $((SECONDS - t0)) "$OUT/$name.log"
  [ "$rc" -eq 0 ] || { echo "== $name: FAILED (exit $rc, log $OUT/$name.log)"; FAILED=1; }
}

# the repository on the path; fastcore from carried wheels where the image lacks it
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ "$DRY" = 0 ] && ! "$PY" -c 'import fastcore' 2>/dev/null; then
  if compgen -G "$ROOT/.whl/*.whl" > /dev/null; then
    SITE=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-site.XXXXXX")
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$ROOT"/.whl/*.whl \
      || die "installing the wheels in $ROOT/.whl failed"
    export PYTHONPATH="$PYTHONPATH:$SITE"
  else
    echo "gpu_check.sh: $PY cannot import fastcore: install the package (pip install -e .) or put its wheel in $ROOT/.whl" >&2
    exit 1
  fi
fi

step probe 60 "${REPORT[@]}" probe --out "$OUT/probe.json"
CUDA=1
if [ "$DRY" = 0 ] && wanted probe; then
  "$PY" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["cuda_available"] else 1)' "$OUT/probe.json" 2>/dev/null || CUDA=0
elif [ "$DRY" = 0 ]; then
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || CUDA=0
fi

if [ "$CUDA" = 1 ]; then
  step cells 180 "${REPORT[@]}" cells --out "$OUT/cuda_cells.json"
  step tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py --junitxml "$OUT/cuda_tests.xml"
  step bench 120 "$PY" tests/dist_scripts/cli.py minimind.bench:minimind_bench --preset minimind2-small --seq_len 512 \
    --batch_size 64 --steps 20 --warmup 5 --dtype bfloat16 --gen_tokens 128 --gen_batch 32 --num_workers 4 --out "$OUT/bench.json"
else
  echo "== no CUDA device: the cells, tests and bench steps need one (this script is for a GPU machine)"
fi

if wanted report; then
  if [ "$DRY" = 1 ]; then printf '%-7s                   %s\n' report "${REPORT[*]} report $OUT"; exit 0; fi
  "${REPORT[@]}" report "$OUT" || FAILED=1
  echo "== $((SECONDS - START)) s in all; the report: $OUT/report.md"
fi
[ "$DRY" = 1 ] && exit 0
[ "$CUDA" = 1 ] || exit 3
exit "$FAILED"
