#!/usr/bin/env bash
# GPU check, for a CUDA machine (no network needed: random weights). Not run in CI.
#   bash benchmarks/gpu_check.sh
# 1. resnet50 and efficientnet_b3 at 224 px with AMP and channels-last: `abtest evaluate`'s images/s
#    against a timm-benchmark-style bare loop on the same tensors (benchmarks/evaluator_overhead.py);
# 2. metrics.json on the GPU has non-null GPU memory and utilization, and the device is CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
for model in timm/resnet50 timm/efficientnet_b3; do
  python benchmarks/evaluator_overhead.py --model "$model" --input-size 224 --batch-size 128 --device cuda --amp --channels-last --repeats 3
done
out="$(mktemp -d)"
abtest evaluate --model timm/resnet50 --dataset digits --split train --input-size 224 --batch-size 128 \
  --device cuda --amp --channels-last --out "$out" --progress none
python - "$out/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
assert m["device"]["type"] == "cuda", m["device"]
assert m["gpu_memory"] and m["gpu_memory"]["max_allocated_bytes"] > 0, m["gpu_memory"]
assert m["gpu_utilization"] is not None, "no NVML utilization samples"
print(f"GPU metrics ok: {m['device']['name']}, max allocated {m['gpu_memory']['max_allocated_bytes'] / 2**30:.2f} GiB, "
      f"utilization mean {m['gpu_utilization']['mean']:.2f}, {m['throughput']:.0f} img/s")
PY
