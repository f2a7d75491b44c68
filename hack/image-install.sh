#!/usr/bin/env bash
# The install step of every image target, kept out of the Dockerfile so CI runs it too
# (tests/test_packaging.py installs the operator target and checks it has no torch).
#   bash hack/image-install.sh operator|evaluator|evaluator-cpu VENV [SRC]
set -euo pipefail
target="$1" venv="$(realpath -m "$2")" src="$(realpath "${3:-$(dirname "$0")/..}")"
cd /  # never run `python3 -m` from a source tree (its folders could shadow the standard library)
python3 -m venv "$venv"
pip=("$venv/bin/pip" install --no-cache-dir -q -c "$src/constraints.txt")
"$venv/bin/pip" install --no-cache-dir -q --upgrade pip
case "$target" in
  operator)      "${pip[@]}" "$src" ;;                                  # control plane only: no torch
  evaluator)     "${pip[@]}" "$src[evaluator,onnx-gpu]" ;;              # CUDA torch and ONNX Runtime from PyPI
  evaluator-cpu)                                                        # torch from TORCH_INDEX_URL (CPU-only by default)
    torch_index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
    extra=(); [ "$torch_index" = https://pypi.org/simple ] || extra=(--extra-index-url https://pypi.org/simple)
    "${pip[@]}" --index-url "$torch_index" "${extra[@]}" "$src[evaluator,onnx]" ;;
  *) echo "unknown target $target (operator, evaluator, evaluator-cpu)" >&2; exit 2 ;;
esac
# An image never runs pip, and nothing here uses the kubernetes client's async twin (kubernetes.aio, 68 MB).
"$venv/bin/pip" uninstall -q -y pip setuptools wheel >/dev/null 2>&1 || true
rm -rf "$venv"/lib/python3*/site-packages/kubernetes/aio
"$venv/bin/abtest" --help >/dev/null
