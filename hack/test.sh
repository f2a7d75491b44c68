#!/usr/bin/env bash
# Sets up everything the tests need and runs them: system packages (openssl, util-linux's unshare,
# Prometheus), the virtualenv, the control-plane binaries (built once from the Go module proxy and
# cached), then pytest over every tier. Prometheus and its Pushgateway come from Debian. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v unshare >/dev/null || need+=(util-linux)
command -v prometheus >/dev/null || need+=(prometheus)
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
source hack/setup.sh
bash tests/cluster/build-binaries.sh >/dev/null
exec python -m pytest "$@"
