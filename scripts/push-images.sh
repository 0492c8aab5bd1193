#!/usr/bin/env bash
# Pushes the manifest lists scripts/build-images.sh built, with both platforms' images, to a
# registry, and writes the digests cosign signs and attests (a digest, never a tag that can
# move): of each pushed list (an OCI index) to target/image/digests/<image>, and of each of
# its platform images, read back from the registry, to target/image/digests/<image>-<arch>
# (pushing compresses the layers, so these differ from the local ones). Prints each pushed
# list as <reference>@<digest>.
#
# Usage: scripts/push-images.sh <repository prefix> [tag] [--tls-verify=false]
#   scripts/push-images.sh ghcr.io/owner/homelab-pki   -> ghcr.io/owner/homelab-pki/<image>:<version>
#   scripts/push-images.sh 127.0.0.1:5000/homelab-pki test --tls-verify=false   (plain HTTP)
# Log in first where the registry asks for it: buildah and skopeo read ~/.docker/config.json.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/images-lib.sh

usage="usage: scripts/push-images.sh <repository prefix> [tag] [--tls-verify=false]"
prefix=${1:?$usage}
tag=${2:-$(workspace_version)}
tls=()
case ${3:-} in
  "") ;;
  --tls-verify=false) tls=(--tls-verify=false) ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
for cmd in buildah skopeo jq; do
  command -v "$cmd" >/dev/null || { echo "$cmd is missing: run scripts/install-test-peers.sh" >&2; exit 2; }
done

digests=$target_dir/image/digests
mkdir -p "$digests"
while read -r image _cluster _crate; do
  list=localhost/homelab-pki/$image:$tag
  remote=$prefix/$image
  buildah "${STORAGE[@]}" inspect --type manifest "$list" >/dev/null 2>&1 ||
    { echo "$list is missing: run scripts/build-images.sh $tag" >&2; exit 2; }
  buildah "${STORAGE[@]}" manifest push --all --format oci --digestfile "$digests/$image" "${tls[@]}" \
    "$list" "docker://$remote:$tag" >&2
  index=$(skopeo inspect --raw "${tls[@]}" "docker://$remote@$(cat "$digests/$image")")
  for platform in "${PLATFORMS[@]}"; do
    jq -er --arg arch "$platform" \
      '[.manifests[] | select(.platform.architecture == $arch) | .digest] | if length == 1 then .[0]
       else error("the pushed index has \(length) images for \($arch)") end' \
      <<<"$index" >"$digests/$image-$platform"
  done
  printf '%s:%s@%s\n' "$remote" "$tag" "$(cat "$digests/$image")"
done < <(image_lines)
