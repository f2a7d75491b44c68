#!/usr/bin/env bash
# Sets up everything the tests need and runs them: system packages (openssl, the Prometheus
# Pushgateway, and the node's pieces: runc, CNI plugins, iptables, buildah, debootstrap), the
# virtualenv, checkov, the Kubernetes binaries, containerd, Prometheus 3 and promtool (built once from the Go module proxy and cached),
# the project's images (built from the Dockerfile with buildah, cached by input hash), then pytest
# over every tier. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v unshare >/dev/null || need+=(util-linux)
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v ip >/dev/null || need+=(iproute2)
command -v pkill >/dev/null || need+=(procps)
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
source hack/setup.sh
# checkov, the Kubernetes scanner users run (tests/test_chart.py), in a venv of its own: its pins clash with ours
CHECKOV_VERSION=3.3.30
export ABTEST_CHECKOV="$ABTEST_CACHE/tools/checkov-$CHECKOV_VERSION"
if [ ! -f "$ABTEST_CHECKOV/.complete" ]; then
  rm -rf "$ABTEST_CHECKOV" && python3 -m venv "$ABTEST_CHECKOV"
  "$ABTEST_CHECKOV/bin/pip" install -q "checkov==$CHECKOV_VERSION" && touch "$ABTEST_CHECKOV/.complete"
fi
bash tests/cluster/build-binaries.sh >/dev/null
bash hack/build-images.sh operator evaluator-cpu >/dev/null
exec python -m pytest "$@"
