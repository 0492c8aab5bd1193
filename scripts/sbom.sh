#!/usr/bin/env bash
# Writes a CycloneDX SBOM (JSON, specification 1.5) of each image's crate per platform, from
# Cargo.lock and the crate's dependency graph for that platform's Rust target, with
# cargo-cyclonedx: target/image/sbom/<image>-<arch>.cdx.json. Each lists every crate compiled
# into the binary with its version, licence, package URL and the SHA-256 Cargo.lock records.
# The release workflow attests each to its platform image and attaches them to the release.
# Uses the cargo-cyclonedx that scripts/install-test-peers.sh installs into .tools/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/images-lib.sh

PATH=$PWD/.tools/cargo-cyclonedx/bin:$PATH
cargo cyclonedx --version >/dev/null 2>&1 ||
  { echo "cargo-cyclonedx is missing: run scripts/install-test-peers.sh" >&2; exit 2; }

# cargo-cyclonedx writes one <name>.json beside every workspace member's Cargo.toml; the ones
# of the images' crates are moved out, the others removed.
members=$(cargo metadata --no-deps --format-version 1 --locked |
  jq -r '.packages[] | "\(.name) \(.manifest_path | rtrimstr("/Cargo.toml"))"')
out=$target_dir/image/sbom
mkdir -p "$out"
for platform in "${PLATFORMS[@]}"; do
  name=cyclonedx-$platform
  cargo cyclonedx --format json --spec-version 1.5 --target "${RUST_TARGET[$platform]}" \
    --override-filename "$name" --quiet
  while read -r image _cluster crate; do
    dir=$(awk -v c="$crate" '$1 == c { print $2 }' <<<"$members")
    mv "$dir/$name.json" "$out/$image-$platform.cdx.json"
    echo "$out/$image-$platform.cdx.json"
  done < <(image_lines)
  while read -r _crate dir; do rm -f "$dir/$name.json"; done <<<"$members"
done
