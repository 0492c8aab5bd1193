#!/usr/bin/env bash
# Every test, from a fresh checkout: installs the test peers, then checks the dependencies
# (cargo-deny), formatting and lints, builds the job images, and runs the whole workspace's tests
# (unit tests, and the integration binary in tests/ that starts OpenBao, HAProxy, a Pushgateway
# and a fake Kubernetes API on free loopback ports, drives openssl, keytool, kubectl, promtool
# and podman).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-peers.sh
# Licences, banned and duplicated crates, sources (deny.toml). The advisory database is a git
# repository on GitHub, which this machine cannot reach: CI checks advisories as a step of its own.
.tools/cargo-deny/bin/cargo-deny --locked check bans licenses sources
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The integration tests run the job binaries as a Pod would, and the images as Kubernetes would:
# both platforms' (linux/amd64, linux/arm64 under qemu-user), from the release binaries that
# build-images.sh cross-compiles for x86_64 and aarch64.
cargo build --workspace --bins --locked
./scripts/build-images.sh test
mkdir -p target
cargo test --workspace --locked 2>&1 | tee target/test-output.log
# Every fuzz target for a bounded time (a few minutes in all, most of it the sanitizer build).
./scripts/fuzz.sh 15
# One closing line for the whole run, summed from cargo's own result lines.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' \
  target/test-output.log
