# Everyday commands. The README's two commands work without `just`; these wrap them and more.

default:
    @just --list

# Run the Istio CA bootstrap on its embedded default: a local state directory, no Vault.
run *args:
    cargo run --release -p bootstrap-job -- {{args}}

# Every test, installing the test peers first (what CI runs).
test:
    ./scripts/test.sh

# Install the test peers only (apt packages, OpenBao into .tools/).
peers:
    ./scripts/install-test-peers.sh

# Lints as CI runs them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# pki-core against the openssl CLI steps of the previous shell scripts.
bench-pki:
    cargo bench -p pki-core --bench vs_openssl

# bootstrap-job against the previous shell scripts on one OpenBao server (wall time, peak memory).
bench-bootstrap runs="15":
    ./scripts/bench-bootstrap.sh {{runs}}

# client-issuer-job against the OpenBao PKI engine and the previous scripts' issue-clients.sh on one OpenBao server.
bench-clients sizes="10 100 1000 5000":
    ./scripts/bench-clients.sh "{{sizes}}"

# nas-sync-job's no-drift re-sync against bao + curl + jq, on OpenBao and the fake API server.
bench-sync:
    cargo build --release --bins
    JOB_PROFILE=release cargo bench -p integration-tests --bench nas_sync

# Build the three job images with buildah (no Docker engine or registry needed).
images tag="dev":
    ./scripts/build-images.sh {{tag}}

# Load the policies and roles into a Vault (VAULT_ADDR, VAULT_TOKEN): homelab or nas.
vault-setup site:
    ./vault/setup.sh {{site}}

# Fuzz every parser of untrusted input (pki-core, the clients file, the configuration
# variables) for a while each (default 60 s); cargo-fuzz is installed into .tools/.
fuzz seconds="60":
    ./scripts/fuzz.sh {{seconds}}
