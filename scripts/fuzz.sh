#!/usr/bin/env bash
# Fuzzes every parser of untrusted input for a bounded time each: pki-core's (certificates,
# keys, CRLs, Istio bundles, PKCS#12), the clients file, and the configuration variables.
# cargo-fuzz is installed into .tools/ inside the checkout (pinned); the stable toolchain is
# told to accept the sanitizer flags. A crash fails the run and leaves its input under
# fuzz/artifacts/<target>/.
# Usage: scripts/fuzz.sh [seconds per target]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
CARGO_FUZZ_VERSION=0.13.2

fuzz=.tools/cargo-fuzz/bin/cargo-fuzz
if ! { [ -x "$fuzz" ] && "$fuzz" --version | grep -q " $CARGO_FUZZ_VERSION"; }; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION into .tools/cargo-fuzz" >&2
  cargo install --quiet --locked --root .tools/cargo-fuzz --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi
fuzz=$PWD/$fuzz
cd fuzz
log=$(mktemp); trap 'rm -f "$log"' EXIT
for target in parse_untrusted clients_file job_config; do
  echo "fuzzing $target for ${seconds}s" >&2
  if ! RUSTC_BOOTSTRAP=1 "$fuzz" run "$target" -- -max_total_time="$seconds" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzzing $target failed; the crashing input, if any, is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^Done' "$log" >&2
done
