#!/usr/bin/env bash
# Creates (or reuses) the project's virtualenv outside the checkout, keyed by the pinned versions,
# and installs this checkout into it in editable mode. Source it to get the venv on PATH:
#   source hack/setup.sh
# The first run downloads torch & co. (several GB, a few minutes); later runs take seconds.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ABTEST_CACHE="${ABTEST_CACHE:-$HOME/.cache/abtest}"
_python="${PYTHON:-python3}"
_key="$( (cat "$_root/constraints.txt"; "$_python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-12)"
export ABTEST_VENV="$ABTEST_CACHE/venv-$_key"
if [ ! -f "$ABTEST_VENV/.complete" ]; then
  echo "setting up $ABTEST_VENV (first run: downloads torch, a few minutes)" >&2
  rm -rf "$ABTEST_VENV"
  mkdir -p "$ABTEST_CACHE"
  "$_python" -m venv "$ABTEST_VENV"
  "$ABTEST_VENV/bin/pip" install -q --upgrade pip
  "$ABTEST_VENV/bin/pip" install -q -c "$_root/constraints.txt" "$_root[evaluator,test]"
  touch "$ABTEST_VENV/.complete"
fi
# Editable install of this checkout (the cached venv may have served another clone).
_log="$(mktemp)"
"$ABTEST_VENV/bin/pip" install -q --no-deps -e "$_root" >"$_log" 2>&1 || { cat "$_log" >&2; exit 1; }
rm -f "$_log"
export PATH="$ABTEST_VENV/bin:$PATH"
