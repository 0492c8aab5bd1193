#!/usr/bin/env bash
# client-issuer-job against its two peers on one OpenBao dev server, in one run:
#  - OpenBao's own PKI engine: an EC P-256 root (`pki/root/generate/internal`), a role, and
#    `pki/issue/<role>` over one keep-alive HTTP connection (a certificate and key per call;
#    no PKCS#12, no KV entry);
#  - the previous shell scripts (../shared/baseline/issue-clients.sh: per client an openssl key,
#    CSR, signature, PKCS#12 and one `bao kv put`), timed on at most 50 clients per size.
# For each size N it reports the job's first run (per client), a no-op re-run and peak memory;
# then the one-off `issue NAME EMAIL` with 20 and with 2,000 clients stored.
# Usage: scripts/bench-clients.sh ["10 100 1000 5000"] ["20 2000"]
# (a smaller set of sizes for a quick run: scripts/bench-clients.sh "10 100" "20 200").
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${1:-10 100 1000 5000}
oneoff_sizes=${2:-20 2000}
baseline_max=50
cargo build --release -p client-issuer-job --locked 2>/dev/null
job=$PWD/target/release/client-issuer-job
source scripts/bench-lib.sh

export LOG_FORMAT=json
clients_file() { # clients_file N PREFIX: a clients file of N users
  local f="$work/clients-$2-$1.yaml"
  { echo "clients:"; for i in $(seq "$1"); do printf '  - name: %s%s\n    email: %s%s@example.org\n' "$2" "$i" "$2" "$i"; done; } >"$f"
  echo "$f"
}
new_mount() { bao secrets enable -path="$1" -version=2 kv >/dev/null; }

# The PKI engine, set up once as its documentation's quick start does (EC P-256 root, a role
# for client certificates).
bao secrets enable pki >/dev/null
bao secrets tune -max-lease-ttl=87600h pki >/dev/null
bao write -field=certificate pki/root/generate/internal common_name="Bench Client CA" \
  key_type=ec key_bits=256 ttl=87600h >/dev/null
bao write pki/roles/clients allow_any_name=true enforce_hostnames=false key_type=ec \
  key_bits=256 client_flag=true server_flag=false ttl=8760h >/dev/null
pki_issue() { # pki_issue N: wall ms of N `pki/issue/clients` calls over one keep-alive connection
  python3 - "$1" <<'PY'
import http.client, json, os, sys, time, urllib.parse
n = int(sys.argv[1])
u = urllib.parse.urlparse(os.environ["VAULT_ADDR"])
c = http.client.HTTPConnection(u.hostname, u.port)
h = {"X-Vault-Token": os.environ["VAULT_TOKEN"], "Content-Type": "application/json"}
start = time.perf_counter()
for i in range(n):
    body = json.dumps({"common_name": f"pki-user{i}", "ttl": "8760h"})
    c.request("POST", "/v1/pki/issue/clients", body, h)
    r = c.getresponse()
    data = r.read()
    if r.status != 200:
        sys.exit(f"pki/issue answered {r.status}: {data[:200]!r}")
print(f"{(time.perf_counter() - start) * 1000:.2f}")
PY
}

printf '%-8s %14s %14s %14s %14s %12s %14s\n' clients "first ms/cl" "PKI ms/cert" "shell ms/cl" "no-op ms" "first KiB" "no-op KiB"
for n in $sizes; do
  # First runs on fresh mounts (three up to 1,000 clients, the median kept), then no-op runs
  # over the first of them.
  runs=$(( n <= 1000 ? 3 : 1 ))
  for r in $(seq "$runs"); do new_mount "bench$n-$r"; done
  file=$(clients_file "$n" user)
  CLIENTS_FILE=$file measure "first-$n" "$runs" sh -c "VAULT_KV_MOUNT=bench$n-\$RUN exec $job"
  VAULT_KV_MOUNT="bench$n-1" CLIENTS_FILE=$file measure "noop-$n" 5 "$job"
  pki=$(pki_issue "$n")
  b=$(( n < baseline_max ? n : baseline_max ))
  measure "base-$n" 1 env CA_PATH="base$n/ca" CLIENTS_PATH="base$n/clients" PREFIX=base "$baseline/issue-clients.sh" "$b"
  printf '%-8s %14s %14s %14s %14s %12s %14s\n' "$n" \
    "$(awk -v t="$(wall "first-$n")" -v n="$n" 'BEGIN {printf "%.3f", t / n}')" \
    "$(awk -v t="$pki" -v n="$n" 'BEGIN {printf "%.3f", t / n}')" \
    "$(awk -v t="$(wall "base-$n")" -v n="$b" 'BEGIN {printf "%.1f", t / n}')" \
    "$(wall "noop-$n")" "$(rss "first-$n")" "$(rss "noop-$n")"
done

echo
# The one-off runs of every size alternate, so that each size meets the same load.
for n in $oneoff_sizes; do
  new_mount "oneoff$n"
  file=$(clients_file "$n" user)
  VAULT_KV_MOUNT="oneoff$n" CLIENTS_FILE=$file "$job" >/dev/null 2>&1
  VAULT_KV_MOUNT="oneoff$n" CLIENTS_FILE=$file measure "noop-oneoff-$n" 5 "$job"
done
for i in $(seq 9); do
  for n in $oneoff_sizes; do
    VAULT_KV_MOUNT="oneoff$n" CLIENTS_FILE=/dev/null measure "issue-$n" 1 "$job" issue "extra$i" "extra$i@example.org"
  done
done
printf '%-8s %18s %14s %14s %14s\n' stored "issue ms (median)" "issue KiB" "no-op ms" "no-op KiB"
for n in $oneoff_sizes; do
  printf '%-8s %18s %14s %14s %14s\n' "$n" "$(wall "issue-$n")" "$(rss "issue-$n")" "$(wall "noop-oneoff-$n")" "$(rss "noop-oneoff-$n")"
done
