#!/usr/bin/env bash
# Sets up everything the tests need and runs them: the virtualenv, then pytest (every tier).
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/setup.sh
exec python -m pytest "$@"
