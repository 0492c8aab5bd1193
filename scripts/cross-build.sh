#!/usr/bin/env bash
# Builds release binaries of the given crates (default: every crate of images/images.txt) as
# static musl executables for x86_64 and aarch64, in one cargo invocation: the host's build
# scripts and proc macros are compiled once for both targets, and cargo keeps both cores busy
# across the two. ring compiles C and assembly for its target: with Debian's musl-gcc for
# x86_64, and with Debian's gcc-aarch64-linux-gnu for aarch64, which also links the aarch64
# binaries against the musl C library that rustup ships with the target (self-contained, so no
# aarch64 C library is needed here). scripts/install-test-peers.sh installs all of it.
# Usage: scripts/cross-build.sh [crate...]; binaries in target/<rust target>/release/<crate>.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/images-lib.sh

crates=("$@")
if ((${#crates[@]} == 0)); then
  while read -r _image _cluster crate; do crates+=("$crate"); done < <(image_lines)
fi

for cmd in musl-gcc aarch64-linux-gnu-gcc; do
  command -v "$cmd" >/dev/null || { echo "$cmd is missing: run scripts/install-test-peers.sh" >&2; exit 2; }
done
installed=$(rustup target list --installed)
targets=()
for platform in "${PLATFORMS[@]}"; do
  target=${RUST_TARGET[$platform]}
  grep -qx "$target" <<<"$installed" || { echo "the Rust target $target is missing: rustup target add $target" >&2; exit 2; }
  targets+=(--target "$target")
done

# cc-rs would look for aarch64-linux-musl-gcc, which Debian does not ship.
export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
cargo build --release --locked "${targets[@]}" "${crates[@]/#/-p}" >&2
