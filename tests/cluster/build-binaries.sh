#!/usr/bin/env bash
# Builds the binaries the e2e tests start: kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet, kube-proxy, kubectl (k8s.io/kubernetes with its staging modules pinned to the matching v0 versions, as projects
# that import k8s.io/kubernetes do), etcd (a tiny main over etcdmain), helm, and the node's container
# runtime: containerd 2.x with its runc shim and ctr (Debian's containerd 1.6 is too old for kubelet). Everything comes from
# the Go module proxy; results are cached outside the checkout, keyed by version, so a warm machine
# skips the build. Prints the bin directory on stdout; progress goes to stderr.
#
# Two lanes run at once: Kubernetes and then JobSet in one, the other tools one after another in the other. A single build leaves a
# core idle while it downloads modules or links a binary, so a second build beside it fills that core (the
# figures are in docs/testing.md). Each module's commands are one `go build`, which links them in parallel.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
HELM_VERSION="${HELM_VERSION:-3.22.0}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-2.4.2}"
KUEUE_VERSION="${KUEUE_VERSION:-0.17.0}"
JOBSET_VERSION="${JOBSET_VERSION:-0.11.1}"
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-3.16.0}"
# Prometheus 3.X.Y is the module github.com/prometheus/prometheus v0.3XX.Y (the minor in two digits)
PROMETHEUS_MODULE_VERSION="$(IFS=. read -r major minor patch <<<"$PROMETHEUS_VERSION"; printf 'v0.%d%02d.%d' "$major" "$minor" "$patch")"
CACHE="${ABTEST_CACHE:-$HOME/.cache/abtest}"
BIN="$CACHE/k8s-v${K8S_VERSION}-etcd-v${ETCD_VERSION}/bin"
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
CONTAINERD_CMDS=(containerd containerd-shim-runc-v2 ctr)

missing() {
  for b in "$@"; do
    [ -x "$BIN/$b" ] || return 0
    case "$b" in kueue-* | jobset-*) [ -f "$BIN/manifests/$b/webhooks.yaml" ] || return 0 ;; esac
  done
  return 1
}
if ! missing "${K8S_CMDS[@]}" etcd "helm-v${HELM_VERSION}" "${CONTAINERD_CMDS[@]/%/-v${CONTAINERD_VERSION}}" \
  "kueue-v${KUEUE_VERSION}" "jobset-v${JOBSET_VERSION}" kueue jobset "prometheus-v${PROMETHEUS_VERSION}" "promtool-v${PROMETHEUS_VERSION}"; then
  echo "$BIN"; exit 0
fi

mkdir -p "$BIN"
WORK="$(mktemp -d "$CACHE/build-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export GOFLAGS=-mod=mod CGO_ENABLED=0
start=$(date +%s)

build_kubernetes_if_missing() {
  missing "${K8S_CMDS[@]}" || return 0
  # Kubernetes: replace every staging module (required as v0.0.0) with its published v0 twin.
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
  printf '//go:build tools\n\npackage tools\n\nimport (\n' > tools.go
  for cmd in "${K8S_CMDS[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$cmd" >> tools.go; done
  printf ')\n' >> tools.go
  go mod tidy >&2
  echo "building ${K8S_CMDS[*]}" >&2
  local began=$SECONDS
  mkdir -p "$WORK/k8s-out"
  go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v${K8S_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${K8S_VERSION#1.}" \
    -o "$WORK/k8s-out/" "${K8S_CMDS[@]/#/k8s.io/kubernetes/cmd/}"
  for cmd in "${K8S_CMDS[@]}"; do mv "$WORK/k8s-out/$cmd" "$BIN/$cmd"; done
  echo "built ${K8S_CMDS[*]}: ${SECONDS}s since the start, $((SECONDS - began))s compiling" >&2
}

# build_main OUT MODULE@VERSION PACKAGE LDFLAGS SOURCE: a scratch module that requires MODULE and
# builds PACKAGE (a main package, or "." for SOURCE's own main) into $BIN/OUT.
build_main() {
  local out="$1" module="$2" package="$3" ldflags="$4" source="$5"
  mkdir -p "$WORK/$out" && cd "$WORK/$out"
  go mod init "abtest.dev/$out" >/dev/null 2>&1
  printf '%b' "$source" > main.go
  go get "$module" >&2
  go mod tidy >&2
  echo "building $out" >&2
  local began=$SECONDS
  go build -trimpath -ldflags "-s -w $ldflags" -o "$WORK/$out.bin" "$package"
  mv "$WORK/$out.bin" "$BIN/$out"
  echo "built $out: ${SECONDS}s since the start, $((SECONDS - began))s compiling" >&2
}

# manifests_of OUT MODULE: MODULE's CRD bases and webhook configurations (from the module that built OUT) copied to
# $BIN/manifests/OUT/ (crds/*.yaml, webhooks.yaml); a binary without them counts as missing.
manifests_of() {
  local out="$1" module="$2" dir
  dir="$(cd "$WORK/$out" && go list -m -f '{{.Dir}}' "$module")"
  rm -rf "$BIN/manifests/$out" && mkdir -p "$BIN/manifests/$out/crds"
  cp "$dir"/config/components/crd/bases/*.yaml "$BIN/manifests/$out/crds/"
  cp "$dir/config/components/webhook/manifests.yaml" "$BIN/manifests/$out/webhooks.yaml"
}

build_tools() {
  if missing etcd; then
    # etcd's own main package lives in a module that cannot be required, so call etcdmain.
    build_main etcd "go.etcd.io/etcd/server/v3@v${ETCD_VERSION}" . "" \
      'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n'
  fi

  if missing "helm-v${HELM_VERSION}"; then
    build_main "helm-v${HELM_VERSION}" "helm.sh/helm/v3@v${HELM_VERSION}" helm.sh/helm/v3/cmd/helm \
      "-X helm.sh/helm/v3/internal/version.version=v${HELM_VERSION}" \
      '//go:build tools\n\npackage tools\n\nimport _ "helm.sh/helm/v3/cmd/helm"\n'
    ln -sf "helm-v${HELM_VERSION}" "$BIN/helm"
  fi

  if missing "${CONTAINERD_CMDS[@]/%/-v${CONTAINERD_VERSION}}"; then
    # No cgo: the snapshotters that need C libraries are left out (the node uses overlayfs).
    mkdir -p "$WORK/containerd" && cd "$WORK/containerd"
    go mod init abtest.dev/containerd >/dev/null 2>&1
    printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/containerd/containerd/v2/cmd/containerd"\n' > tools.go
    go get "github.com/containerd/containerd/v2@v${CONTAINERD_VERSION}" >&2
    go mod tidy >&2
    echo "building ${CONTAINERD_CMDS[*]}" >&2
    local began=$SECONDS
    mkdir -p "$WORK/containerd-out"
    go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
      -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=v${CONTAINERD_VERSION}" \
      -o "$WORK/containerd-out/" "${CONTAINERD_CMDS[@]/#/github.com/containerd/containerd/v2/cmd/}"
    for cmd in "${CONTAINERD_CMDS[@]}"; do
      mv "$WORK/containerd-out/$cmd" "$BIN/$cmd-v${CONTAINERD_VERSION}"
      ln -sf "$cmd-v${CONTAINERD_VERSION}" "$BIN/$cmd"
    done
    echo "built ${CONTAINERD_CMDS[*]}: ${SECONDS}s since the start, $((SECONDS - began))s compiling" >&2
  fi

  if missing "prometheus-v${PROMETHEUS_VERSION}" "promtool-v${PROMETHEUS_VERSION}"; then
    # Prometheus 3 and promtool, with Kubernetes discovery only (its build tags leave the other service discoveries
    # out) and without the web UI's assets (the API is what the tests use). client-go and friends at the Kubernetes
    # build's version, so their compiled packages are shared with it. No `go mod tidy`: it would fetch every left-out
    # discovery's modules; the build fetches what it compiles.
    mkdir -p "$WORK/prometheus" && cd "$WORK/prometheus"
    go mod init abtest.dev/prometheus >/dev/null 2>&1
    printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "github.com/prometheus/prometheus/cmd/prometheus"\n\t_ "github.com/prometheus/prometheus/cmd/promtool"\n)\n' > tools.go
    local staging="v0.${K8S_VERSION#1.}"
    go get "github.com/prometheus/prometheus@${PROMETHEUS_MODULE_VERSION}" "k8s.io/api@$staging" "k8s.io/apimachinery@$staging" "k8s.io/client-go@$staging" >&2
    echo "building prometheus promtool" >&2
    local began=$SECONDS
    mkdir -p "$WORK/prometheus-out"
    go build -trimpath -tags "remove_all_sd enable_kubernetes_sd" \
      -ldflags "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION}" \
      -o "$WORK/prometheus-out/" github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool
    for cmd in prometheus promtool; do
      mv "$WORK/prometheus-out/$cmd" "$BIN/$cmd-v${PROMETHEUS_VERSION}"
      ln -sf "$cmd-v${PROMETHEUS_VERSION}" "$BIN/$cmd"
    done
    echo "built prometheus promtool: ${SECONDS}s since the start, $((SECONDS - began))s compiling" >&2
  fi

  # Kueue (the queue mode's e2e test runs it and the JobSet controller as host processes), with its CRDs.
  if missing "kueue-v${KUEUE_VERSION}"; then
    build_main "kueue-v${KUEUE_VERSION}" "sigs.k8s.io/kueue@v${KUEUE_VERSION}" sigs.k8s.io/kueue/cmd/kueue "" \
      '//go:build tools\n\npackage tools\n\nimport _ "sigs.k8s.io/kueue/cmd/kueue"\n'
    manifests_of "kueue-v${KUEUE_VERSION}" sigs.k8s.io/kueue
  fi
}

# The JobSet controller, in the Kubernetes lane: that lane ends first otherwise (docs/testing.md has the timings).
build_jobset_if_missing() {
  missing "jobset-v${JOBSET_VERSION}" || return 0
  build_main "jobset-v${JOBSET_VERSION}" "sigs.k8s.io/jobset@v${JOBSET_VERSION}" sigs.k8s.io/jobset "" \
    '//go:build tools\n\npackage tools\n\nimport _ "sigs.k8s.io/jobset"\n'
  manifests_of "jobset-v${JOBSET_VERSION}" sigs.k8s.io/jobset
}

# The lanes run in subshells with errexit, so a failing step ends its lane with its status (steps are separate
# commands, never joined by && or ||, which would turn errexit off inside them).
(build_kubernetes_if_missing; build_jobset_if_missing) &
kubernetes_lane=$!
(build_tools) &
tools_lane=$!
trap 'kill "$kubernetes_lane" "$tools_lane" 2>/dev/null; rm -rf "$WORK"' EXIT
failed=0
wait "$kubernetes_lane" || failed=$?
wait "$tools_lane" || failed=$?
[ "$failed" = 0 ] || { echo "build-binaries: a build failed (its error is above)" >&2; exit "$failed"; }

# unversioned names for the tests, as for helm and containerd (outside the builds: a cache from before had none)
for name in "kueue-v${KUEUE_VERSION}" "jobset-v${JOBSET_VERSION}"; do
  ln -sfn "$name" "$BIN/${name%%-v*}"
  ln -sfn "$name" "$BIN/manifests/${name%%-v*}"
done

echo "built in $(( $(date +%s) - start ))s" >&2
echo "$BIN"
