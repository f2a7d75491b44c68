#!/usr/bin/env bash
# Builds the control-plane binaries the e2e tests start: kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl (k8s.io/kubernetes with its staging modules pinned to the matching v0
# versions, as projects that import k8s.io/kubernetes do) and etcd (a tiny main over etcdmain).
# Everything comes from the Go module proxy; the result is cached outside the checkout, keyed by
# version, so a warm machine skips the build. Prints the bin directory on stdout.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
CACHE="${ABTEST_CACHE:-$HOME/.cache/abtest}"
BIN="$CACHE/k8s-v${K8S_VERSION}-etcd-v${ETCD_VERSION}/bin"
WANT=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)

have_all() { for b in "${WANT[@]}"; do [ -x "$BIN/$b" ] || return 1; done; }
if have_all; then echo "$BIN"; exit 0; fi

WORK="$(mktemp -d "$CACHE/build-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export GOFLAGS=-mod=mod CGO_ENABLED=0
start=$(date +%s)

# --- Kubernetes: replace every staging module (required as v0.0.0) with its published v0 twin.
mkdir -p "$WORK/k8s" && cd "$WORK/k8s"
go mod init abtest.dev/k8s-binaries >/dev/null 2>&1
gomod="$(go mod download -json "k8s.io/kubernetes@v${K8S_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
staging_version="v0.${K8S_VERSION#1.}"
{
  echo "require k8s.io/kubernetes v${K8S_VERSION}"
  awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod" | sort -u | while read -r mod; do
    echo "replace $mod => $mod $staging_version"
  done
} >> go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
go mod tidy >&2
mkdir -p "$WORK/bin"
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  echo "building $cmd" >&2
  go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v${K8S_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${K8S_VERSION#1.}" \
    -o "$WORK/bin/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done

# --- etcd: the server's own main package lives in a module that cannot be required, so call etcdmain.
mkdir -p "$WORK/etcd" && cd "$WORK/etcd"
go mod init abtest.dev/etcd >/dev/null 2>&1
cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
go get "go.etcd.io/etcd/server/v3@v${ETCD_VERSION}" >&2
go mod tidy >&2
echo "building etcd" >&2
go build -trimpath -ldflags "-s -w" -o "$WORK/bin/etcd" .

mkdir -p "$(dirname "$BIN")"
rm -rf "$BIN" && mv "$WORK/bin" "$BIN"
echo "built in $(( $(date +%s) - start ))s" >&2
echo "$BIN"
