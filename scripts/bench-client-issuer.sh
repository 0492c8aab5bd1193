#!/usr/bin/env bash
# client-issuer-job against the seeds' shell approach (../shared/baseline/issue-clients.sh:
# per client an openssl key, CSR, signature, PKCS#12 and one `bao kv put`) on one OpenBao
# dev server in one run. The job issues N clients (default 1000) end to end, then runs again
# over them as a no-op; the shell script is timed on 50 clients and compared per client.
# Usage: scripts/bench-client-issuer.sh [clients]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
baseline_n=50
cargo build --release -p client-issuer-job --locked 2>/dev/null
job=$PWD/target/release/client-issuer-job
source scripts/bench-lib.sh

{
  echo "clients:"
  for i in $(seq "$n"); do printf '  - name: user%s\n    email: user%s@example.org\n' "$i" "$i"; done
} >"$work/clients.yaml"
# Paths of our own: the shell script keeps its CA at secret/pki/ca in another shape.
export CLIENTS_FILE="$work/clients.yaml" LOG_FORMAT=json
export PKI_CA_PATH=bench/ca PKI_ISSUER_PATH=bench/issuer PKI_CLIENTS_PATH=bench/clients

measure ours-first 1 "$job"
measure ours-noop 3 "$job"
measure base 1 env PREFIX=base "$baseline/issue-clients.sh" "$baseline_n"

of=$(wall ours-first); on=$(wall ours-noop); bw=$(wall base)
per_ours=$(awk -v t="$of" -v n="$n" 'BEGIN {printf "%.2f", t / n}')
per_base=$(awk -v t="$bw" -v n="$baseline_n" 'BEGIN {printf "%.2f", t / n}')
printf '%-44s %12s %12s\n' "" "wall ms" "max RSS KiB"
printf '%-44s %12s %12s\n' "client-issuer-job, first run, $n clients" "$of" "$(rss ours-first)"
printf '%-44s %12s %12s\n' "client-issuer-job, no-op over $n clients" "$on" "$(rss ours-noop)"
printf '%-44s %12s %12s\n' "issue-clients.sh, $baseline_n clients" "$bw" "$(rss base)"
echo "per client: client-issuer-job $per_ours ms, shell $per_base ms: $(ratio "$per_base" "$per_ours") faster"
