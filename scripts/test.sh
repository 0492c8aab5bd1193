#!/usr/bin/env bash
# Every test, from a fresh checkout: installs the test peers, then checks formatting, lints
# and runs the whole workspace's tests (unit tests, and the integration binary in tests/
# that starts OpenBao and HAProxy on free loopback ports and drives openssl and keytool).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-peers.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The integration tests run the job binaries as a Pod would.
cargo build --workspace --bins --locked
cargo test --workspace --locked
