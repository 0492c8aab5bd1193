#!/usr/bin/env bash
# Builds the three job images without a Docker engine or a registry: static (musl) binaries
# built here, then `buildah bud` on each images/**/Dockerfile with the prebuilt binaries and a
# scratch base (plus the CA bundle), vfs storage and chroot isolation. Prints each image's size.
# Usage: scripts/build-images.sh [tag]   (default dev); images are localhost/homelab-pki/<name>:<tag>
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-dev}
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot

for cmd in buildah podman; do
  command -v $cmd >/dev/null || { echo "$cmd is missing: apt-get install buildah podman runc" >&2; exit 2; }
done
grep -qx x86_64-unknown-linux-musl <<<"$(rustup target list --installed)" || rustup target add x86_64-unknown-linux-musl
command -v musl-gcc >/dev/null || { echo "musl-gcc is missing: apt-get install musl-tools" >&2; exit 2; }

jobs=(bootstrap-job nas-sync-job client-issuer-job)
cargo build --release --locked --target x86_64-unknown-linux-musl "${jobs[@]/#/-p}" >&2
mkdir -p target/image
for job in "${jobs[@]}"; do
  install -m 0755 "target/x86_64-unknown-linux-musl/release/$job" "target/image/$job"
done
install -m 0644 /etc/ssl/certs/ca-certificates.crt target/image/ca-certificates.crt

for dockerfile in images/*/*/Dockerfile; do
  name=$(basename "$(dirname "$dockerfile")")
  buildah bud --quiet --layers=false --build-arg BUILDER=prebuilt --build-arg BASE=scratch \
    -f "$dockerfile" -t "localhost/homelab-pki/$name:$tag" . >/dev/null
  size=$(podman image inspect --format '{{.Size}}' "localhost/homelab-pki/$name:$tag")
  printf '%s\t%s\n' "localhost/homelab-pki/$name:$tag" "$size"
done
