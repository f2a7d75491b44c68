#!/usr/bin/env bash
# The install step of every image target, kept out of the Dockerfile so CI runs it too
# (tests/test_packaging.py installs the operator target and checks it has no torch).
#   bash hack/image-install.sh operator|evaluator|evaluator-cpu VENV [SRC]
set -euo pipefail
target="$1" venv="$2" src="${3:-$(cd "$(dirname "$0")/.." && pwd)}"
python3 -m venv "$venv"
pip=("$venv/bin/pip" install --no-cache-dir -q -c "$src/constraints.txt")
"$venv/bin/pip" install --no-cache-dir -q --upgrade pip
case "$target" in
  operator)      "${pip[@]}" "$src" ;;                                  # control plane only: no torch
  evaluator)     "${pip[@]}" "$src[evaluator]" ;;                       # CUDA torch from PyPI
  evaluator-cpu) "${pip[@]}" --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple "$src[evaluator]" ;;
  *) echo "unknown target $target (operator, evaluator, evaluator-cpu)" >&2; exit 2 ;;
esac
"$venv/bin/abtest" --help >/dev/null
