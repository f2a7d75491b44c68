#!/usr/bin/env bash
# The GPU check, one command for a lent GPU machine (see docs/benchmarks.md); at most 7 minutes on one H100/H200.
#   bash benchmarks/gpu_check.sh          # on the GPU machine, through the device tool
#   bash benchmarks/gpu_check.sh --cpu    # every phase at toy sizes on the CPU (what tests/test_gpu_check.py runs)
# Nothing is fetched: the checkout is installed with pip --no-index --no-deps into a scratch folder (the GPU machine's
# python3 already has torch, timm and the rest), models have random weights, the data set is a synthetic CIFAR-10.
# Every phase runs under its own timeout and the table at the end is printed even when phases fail; the exit status
# is non-zero when a phase failed or a target was missed. PYTHON picks the interpreter (default python3).
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
device=cuda
[ "${1:-}" = "--cpu" ] && device=cpu
py="${PYTHON:-python3}"
work="$(mktemp -d)"
# Never run Python from the repository root: its operator/ folder would shadow the standard library's operator.
cd "$work"
results="$work/results.jsonl" status="$work/status"
: >"$status"
if [ "$device" = cuda ]; then
  # the timeouts add up to 7 minutes: 60 + 30 + 30 + 30 + 2 x 45 + 2 x 90 s
  models="${GPU_CHECK_MODELS:-timm/resnet50 timm/efficientnet_b3}" per_batch=10000 batch=256 seconds=5 size=()
  t_install=60 t_quick=30 t_data=30 t_ceiling=45 t_eval=90
else
  models="${GPU_CHECK_MODELS:-timm/test_resnet timm/test_efficientnet}" per_batch=40 batch=16 seconds=0.5 size=(--input-size 32)
  t_install=120 t_quick=60 t_data=60 t_ceiling=60 t_eval=120
fi
first="${models%% *}"

phase() {  # phase NAME SECONDS COMMAND...: runs it under its timeout, logs to NAME.log, records its exit status
  local name="$1" limit="$2"
  shift 2
  echo "== $name (timeout ${limit}s)" >&2
  timeout --kill-after=10 "$limit" "$@" >"$work/$name.log" 2>&1
  local rc=$?
  echo "$name $rc" >>"$status"
  [ "$rc" = 0 ] || tail -n 5 "$work/$name.log" >&2
  return 0
}
check=("$py" "$repo/benchmarks/gpu_check.py" --results "$results" --device "$device")

phase install "$t_install" "$py" -m pip install --no-index --no-deps --no-build-isolation --quiet --target "$work/site" "$repo"
export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
phase env "$t_quick" "${check[@]}" env
phase imports "$t_quick" "${check[@]}" imports
phase dataset "$t_data" "${check[@]}" dataset --out "$work/data" --per-batch "$per_batch"
for model in $models; do
  phase "ceiling-${model#*/}" "$t_ceiling" "${check[@]}" ceiling --model "$model" --batch-size "$batch" --seconds "$seconds" "${size[@]}"
done
phase evaluate "$t_eval" "${check[@]}" evaluate --model "$first" --batch-size "$batch" --data "$work/data" --out "$work/out" "${size[@]}"
phase nondeterministic "$t_eval" "${check[@]}" evaluate --model "$first" --batch-size "$batch" --data "$work/data" --out "$work/out" \
  --tag nondeterministic "${size[@]}" -- --nondeterministic
echo "== results ($work)"
"${check[@]}" table --status "$status" --logs "$work"
