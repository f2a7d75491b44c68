#!/usr/bin/env bash
# Builds the Dockerfile's image targets without a Docker engine: buildah (chroot isolation) over the
# unchanged Dockerfile, from a local Python base made with debootstrap and passed in through the
# PYTHON_IMAGE build argument (base images cannot be pulled on machines without a registry).
#
#   bash hack/build-images.sh [TARGET ...]     # default: operator evaluator-cpu
#
# Prints one line per target on stdout: "TARGET REF ARCHIVE", where ARCHIVE is an OCI archive that
# `ctr images import` (or `podman load`) takes and REF the image name inside it. Progress goes to
# stderr. Everything is cached outside the checkout ($ABTEST_CACHE/images), keyed by a hash of the
# build's inputs, so a warm machine only prints the lines.
#
# Settings (environment):
#   TORCH_INDEX_URL   where evaluator-cpu takes torch (default: PyPI, the only index reachable on
#                     these machines; the Dockerfile's own default, for users, is PyTorch's CPU index)
#   DEBIAN_MIRROR     the mirror debootstrap reads (default: the first one apt is configured with)
#   PIP_CERT          CA bundle for pip inside the build (default: the system bundle), mounted read-only
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${ABTEST_CACHE:-$HOME/.cache/abtest}/images"
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://pypi.org/simple}"
PIP_CERT="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(operator evaluator-cpu)
mkdir -p "$CACHE"
log() { echo "build-images: $*" >&2; }

for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || { echo "build-images: $tool is not installed (apt-get install buildah debootstrap)" >&2; exit 1; }
done

# --- the Python base: Debian's python3 in a minimal rootfs ------------------------------------------
mirror="${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p; s/^deb \(\[[^]]*\] \)\?\([^ ]*\) .*/\2/p' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | grep -v security | head -n1 || true)}"
mirror="${mirror:-http://deb.debian.org/debian}"
base_key="$(printf '%s\n' "$SUITE" "$BASE_PACKAGES" "v1" | sha256sum | cut -c1-12)"
BASE_REF="localhost/abtest/python-base:$base_key"
if ! buildah inspect --type image "$BASE_REF" >/dev/null 2>&1; then
  rootfs_tar="$CACHE/python-base-$base_key.tar"
  if [ ! -f "$rootfs_tar" ]; then
    log "debootstrap $SUITE ($BASE_PACKAGES) from $mirror"
    work="$(mktemp -d "$CACHE/rootfs-XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$work/rootfs" "$mirror" >&2
    # Trim what an image never uses: apt lists and caches, docs, man pages, locales.
    rm -rf "$work"/rootfs/var/lib/apt/lists/* "$work"/rootfs/var/cache/apt/* "$work"/rootfs/usr/share/{doc,man,info,locale}/* \
      "$work"/rootfs/var/log/*.log "$work"/rootfs/var/cache/debconf/*-old
    tar -C "$work/rootfs" --numeric-owner -cf "$rootfs_tar.tmp" .
    mv "$rootfs_tar.tmp" "$rootfs_tar"
    rm -rf "$work"
    trap - EXIT
  fi
  log "importing the base as $BASE_REF"
  ctr="$(buildah from scratch)"
  mnt="$(buildah mount "$ctr")"
  tar -C "$mnt" --numeric-owner -xf "$rootfs_tar"
  buildah umount "$ctr" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 --cmd python3 "$ctr"
  buildah commit --quiet --rm "$ctr" "$BASE_REF" >/dev/null
fi

# --- the pod sandbox (pause) image: a static binary, so a node needs no registry ----------------------
pause_key="$(sha256sum < "$ROOT/tests/cluster/pause.c" | cut -c1-12)"
PAUSE_REF="localhost/abtest/pause:$pause_key"
pause_archive="$CACHE/pause-$pause_key.oci.tar"
if [ ! -f "$pause_archive" ]; then
  log "building $PAUSE_REF"
  work="$(mktemp -d "$CACHE/pause-XXXXXX")"
  gcc -static -Os -s -o "$work/pause" "$ROOT/tests/cluster/pause.c"
  ctr="$(buildah from scratch)"
  buildah copy --quiet "$ctr" "$work/pause" /pause >/dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
  buildah commit --quiet --rm "$ctr" "$PAUSE_REF" >/dev/null
  buildah push --quiet "$PAUSE_REF" "oci-archive:$pause_archive.tmp:$PAUSE_REF" >&2
  mv "$pause_archive.tmp" "$pause_archive"
  rm -rf "$work"
fi
echo "pause $PAUSE_REF $pause_archive"

# --- the targets ------------------------------------------------------------------------------------
# The key covers every file the Dockerfile copies (what .dockerignore leaves), the base and the index.
context_hash="$(cd "$ROOT" && { git ls-files -co --exclude-standard -- Dockerfile pyproject.toml constraints.txt README.md operator evaluator crds hack/image-install.sh \
  | LC_ALL=C sort | while IFS= read -r f; do [ -f "$f" ] && printf '%s  %s\n' "$(sha256sum < "$f" | cut -c1-64)" "$f"; done; } | sha256sum | cut -c1-12)"
for target in "${targets[@]}"; do
  key="$(printf '%s\n' "$target" "$context_hash" "$base_key" "$TORCH_INDEX_URL" | sha256sum | cut -c1-12)"
  ref="localhost/abtest/$target:$key"
  archive="$CACHE/$target-$key.oci.tar"
  if [ ! -f "$archive" ]; then
    log "building $target as $ref"
    start=$(date +%s)
    buildah build --isolation chroot --target "$target" -t "$ref" \
      --build-arg "PYTHON_IMAGE=$BASE_REF" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL" --build-arg "PIP_CERT=/etc/abtest-build-ca.crt" \
      --volume "$PIP_CERT:/etc/abtest-build-ca.crt:ro" -f "$ROOT/Dockerfile" "$ROOT" >&2
    buildah push --quiet "$ref" "oci-archive:$archive.tmp:$ref" >&2
    find "$CACHE" -maxdepth 1 -name "$target-????????????.oci.tar" ! -name "$(basename "$archive")" -delete   # older keys
    mv "$archive.tmp" "$archive"
    buildah rmi "$ref" >/dev/null 2>&1 || true   # the archive is the cache; keep buildah's store small
    buildah rmi --prune >/dev/null 2>&1 || true
    log "$target built in $(( $(date +%s) - start ))s, $(du -m "$archive" | cut -f1) MB archive"
  fi
  echo "$target $ref $archive"
done
