#!/usr/bin/env bash
# Builds the job images for linux/amd64 and linux/arm64 without a Docker engine or a registry:
# the static binaries cross-compiled here (scripts/cross-build.sh), then, for each image of
# images/images.txt and each platform, `buildah bud --platform` of images/Dockerfile, and one
# manifest list per image over both. Prints each platform's image and its size in bytes.
#
# Usage: scripts/build-images.sh [tag]
#   tag  defaults to the workspace version (Cargo.toml), the tag the manifests in kubernetes/
#        pull and a release publishes; the test suite builds `test`.
# Images: localhost/homelab-pki/<image>:<tag> (the manifest list) and :<tag>-<arch> (each
# platform), in the container storage under target/containers (see scripts/images-lib.sh):
#   podman --root "$PWD/target/containers/storage" --runroot "$PWD/target/containers/run" \
#     --storage-driver vfs images        (absolute paths: podman records them)
# Labels (OCI): version and licenses from Cargo.toml, description from the crate, revision from
# git (`-dirty` when tracked files differ from it), source from IMAGE_SOURCE (the release
# workflow passes the repository's URL), else Cargo.toml's workspace repository.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/images-lib.sh

for cmd in buildah podman jq git; do
  command -v "$cmd" >/dev/null || { echo "$cmd is missing: run scripts/install-test-peers.sh" >&2; exit 2; }
done

version=$(workspace_version)
tag=${1:-$version}
revision=${IMAGE_REVISION:-$(git rev-parse HEAD)}
if [ -z "${IMAGE_REVISION:-}" ] && ! git diff --quiet HEAD --; then
  revision+=-dirty
fi
source_url=${IMAGE_SOURCE:-$(sed -n '/^\[workspace.package\]/,/^\[/s/^repository *= *"\(.*\)"/\1/p' Cargo.toml)}
[ -n "$source_url" ] || { echo "no source URL: set IMAGE_SOURCE or [workspace.package] repository" >&2; exit 2; }
# The creation time and file times of every layer: the commit's, so that the same commit and
# binaries give the same image digests.
timestamp=$(git log -1 --format=%ct)

scripts/cross-build.sh

# The build context: the CA bundle and one directory of binaries per platform.
context=$target_dir/image
rm -rf "$context"
mkdir -p "$context"
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$context/ca-certificates.crt"
while read -r image _cluster crate; do
  for platform in "${PLATFORMS[@]}"; do
    install -D -m 0755 "$target_dir/${RUST_TARGET[$platform]}/release/$crate" "$context/$platform/$crate"
  done
done < <(image_lines)

exists() { buildah "${STORAGE[@]}" inspect --type "$1" "$2" >/dev/null 2>&1; }

while read -r image _cluster crate; do
  list=localhost/homelab-pki/$image:$tag
  # A rebuild replaces the list and the platform images of this tag, and nothing else.
  if exists manifest "$list"; then buildah "${STORAGE[@]}" manifest rm "$list" >/dev/null; fi
  buildah "${STORAGE[@]}" manifest create "$list" >/dev/null
  description=$(crate_field "$crate" description)
  licenses=$(crate_field "$crate" license)
  for platform in "${PLATFORMS[@]}"; do
    ref=$list-$platform
    if exists image "$ref"; then buildah "${STORAGE[@]}" rmi "$ref" >/dev/null; fi
    buildah "${STORAGE[@]}" bud --quiet --layers=false --isolation chroot \
      --platform "linux/$platform" --timestamp "$timestamp" \
      --build-arg JOB="$crate" --build-arg TITLE="$image" --build-arg DESCRIPTION="$description" \
      --build-arg VERSION="$version" --build-arg REVISION="$revision" \
      --build-arg SOURCE="$source_url" --build-arg LICENSES="$licenses" \
      -f images/Dockerfile -t "$ref" "$context" >/dev/null
    buildah "${STORAGE[@]}" manifest add "$list" "containers-storage:$ref" >/dev/null
    size=$(podman "${STORAGE[@]}" image inspect --format '{{.Size}}' "$ref")
    printf '%s\tlinux/%s\t%s\n' "$list" "$platform" "$size"
  done
done < <(image_lines)
