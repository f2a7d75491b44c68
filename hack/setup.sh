#!/usr/bin/env bash
# Creates (or reuses) the project's virtualenvs outside the checkout and puts this checkout's on PATH:
#   source hack/setup.sh
# Two layers, so that two clones set up at once each run their own sources:
#   $ABTEST_CACHE/venv-KEY             the dependencies only (torch & co.), keyed by the pinned versions and the
#                                      Python; shared by every clone. The first run downloads several GB.
#   $ABTEST_CACHE/checkouts/PATH-KEY   one per checkout path: no packages of its own but this checkout in editable
#                                      mode; a .pth file adds the shared dependencies to its sys.path.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
export ABTEST_CACHE="${ABTEST_CACHE:-$HOME/.cache/abtest}"
_python="${PYTHON:-python3}"
_key="$( (cat "$_root/constraints.txt"; "$_python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-12)"
export ABTEST_DEPS_VENV="$ABTEST_CACHE/venv-$_key"
if [ ! -f "$ABTEST_DEPS_VENV/.complete" ]; then
  echo "setting up $ABTEST_DEPS_VENV (first run: downloads torch, a few minutes)" >&2
  rm -rf "$ABTEST_DEPS_VENV"
  mkdir -p "$ABTEST_CACHE"
  "$_python" -m venv "$ABTEST_DEPS_VENV"
  "$ABTEST_DEPS_VENV/bin/pip" install -q --upgrade pip
  "$ABTEST_DEPS_VENV/bin/pip" install -q -c "$_root/constraints.txt" "$_root[evaluator,onnx,export,test]"
  touch "$ABTEST_DEPS_VENV/.complete"
fi
_deps_site="$("$ABTEST_DEPS_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# The project itself never lives in the shared layer (an older setup installed it there).
if compgen -G "$_deps_site/abtest-*.dist-info" >/dev/null; then
  "$ABTEST_DEPS_VENV/bin/pip" uninstall -q -y abtest >/dev/null
fi
export ABTEST_VENV="$ABTEST_CACHE/checkouts/$(printf '%s' "$_root" | sha256sum | cut -c1-12)-$_key"
if [ ! -f "$ABTEST_VENV/.complete" ]; then
  rm -rf "$ABTEST_VENV"
  "$_python" -m venv --without-pip "$ABTEST_VENV"
  _site="$("$ABTEST_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "import site; site.addsitedir('$_deps_site')" >"$_site/abtest-dependencies.pth"
  echo "$_root" >"$ABTEST_VENV/checkout"
  touch "$ABTEST_VENV/.complete"
fi
# Editable install of this checkout into its own layer (quick; picks up pyproject changes).
_log="$(mktemp)"
"$ABTEST_VENV/bin/python" -m pip install -q --no-deps -e "$_root" >"$_log" 2>&1 || { cat "$_log" >&2; exit 1; }
rm -f "$_log"
export PATH="$ABTEST_VENV/bin:$ABTEST_DEPS_VENV/bin:$PATH"
