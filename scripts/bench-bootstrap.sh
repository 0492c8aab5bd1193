#!/usr/bin/env bash
# bootstrap-job against the previous shell scripts (../shared/baseline: noop.sh and
# bootstrap.sh, Vault CLI + openssl) on one OpenBao dev server in one run: median wall time
# and peak memory (max RSS, with GNU time) of the no-op run and of the first run.
# Usage: scripts/bench-bootstrap.sh [runs]   (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-15}
cargo build --release -p bootstrap-job --locked 2>/dev/null
job=$PWD/target/release/bootstrap-job
source scripts/bench-lib.sh

# No-op: the state exists at the default paths.
LOG_FORMAT=json "$job" 2>/dev/null
measure ours-noop "$runs" env LOG_FORMAT=json "$job"
measure base-noop "$runs" "$baseline/noop.sh"

# First run: a fresh path each time.
measure ours-first "$runs" sh -c 'ISTIO_CA_PATH=bench/ours$RUN/ca ISTIO_CLUSTERS_PATH=bench/ours$RUN/clusters LOG_FORMAT=json exec '"$job"
measure base-first "$runs" sh -c 'KV_PATH=bench/base$RUN/ca exec '"$baseline/bootstrap.sh"

printf '%-10s %14s %14s %8s %16s %16s %8s\n' run "ours wall ms" "shell wall ms" ratio "ours max RSS KiB" "shell max RSS KiB" ratio
for kind in noop first; do
  ow=$(wall ours-$kind); bw=$(wall base-$kind); om=$(rss ours-$kind); bm=$(rss base-$kind)
  printf '%-10s %14s %14s %8s %16s %16s %8s\n' "$kind" "$ow" "$bw" \
    "$(ratio "$bw" "$ow")" "$om" "$bm" "$(ratio "$bm" "$om")"
done
echo "($runs runs each; wall time is the median, memory the largest single process: for the"
echo " shell approach, the largest of its bao/openssl processes, not their sum)"
