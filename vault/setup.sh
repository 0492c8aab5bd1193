#!/usr/bin/env bash
# Configures a Vault (or OpenBao) for this system, idempotently: the KV v2 mount, the policies
# in vault/policies, one auth mount per cluster, and the roles bound to each job's service
# account. Run it once per Vault with VAULT_ADDR and an admin VAULT_TOKEN:
#
#   vault/setup.sh homelab   # the homelab Vault: Istio CA (bootstrap, homelab reader, NAS sync)
#   vault/setup.sh nas       # the NAS Vault: client PKI (client issuer, ESO reader token policy,
#                            # each user's read of their own bundle)
#
# Each cluster authenticates through its own mount, Kubernetes auth by default: in the homelab
# Vault `kubernetes` (homelab) and `kubernetes-nas` (NAS cluster), or `jwt`/`jwt-nas`; in the
# NAS Vault `kubernetes` (or `jwt`).
#
# Kubernetes auth is configured with a reviewer: Vault sends every login JWT to the cluster's
# TokenReview API with the token of vault-auth/vault-token-reviewer (kubernetes/<cluster>/
# security/vault-auth, bound to system:auth-delegator) as the bearer. Without one, Vault would
# send the login JWT itself, which the API server refuses: it carries the audience `vault`, not
# the API server's, and the job's service account may not create TokenReviews. Read it with
#   kubectl -n vault-auth get secret vault-token-reviewer -o jsonpath='{.data.token}' | base64 -d
# disable_local_ca_jwt=true: never fall back to the token and CA of Vault's own pod, which
# belong to whichever cluster Vault runs in. Roles:
#   homelab Vault: istio-ca-bootstrap (istio-system/istio-ca-bootstrap),
#                  istio-ca-reader (istio-system/istio-cacerts-reader, the homelab SecretStore),
#                  istio-ca-sync on the NAS mount (istio-system/istio-ca-sync)
#   NAS Vault:     client-issuer (pki/client-issuer)
#   HOMELAB_AUTH / NAS_AUTH        kubernetes | jwt                       [kubernetes]
#   HOMELAB_K8S_HOST, HOMELAB_K8S_CA_FILE, HOMELAB_K8S_REVIEWER_JWT_FILE
#                                  kubernetes auth of the homelab cluster: API server URL, its
#                                  CA (PEM), the reviewer's token (a file, as read above)
#   NAS_K8S_HOST, NAS_K8S_CA_FILE, NAS_K8S_REVIEWER_JWT_FILE   the same for the NAS cluster
#   HOMELAB_JWT_KEYS_FILE, NAS_JWT_KEYS_FILE  PEM public keys of the service-account issuer (jwt)
#   JWT_ISSUER                     expected iss of service-account tokens
#                                  [https://kubernetes.default.svc.cluster.local]
#   TOKEN_AUDIENCE                 audience the projected tokens carry  [vault]
#
# File arguments are read relative to the directory it is run from; the policies come from
# the script's own directory. Safe to run again: every step writes the same configuration.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
site=${1:?usage: setup.sh homelab|nas}
cli=${VAULT_CLI:-$(command -v vault || command -v bao || true)}
if [ -z "$cli" ] || ! command -v "$cli" >/dev/null; then
  echo "setup.sh: neither vault nor bao is on PATH (or set VAULT_CLI to the CLI to use)" >&2
  exit 127
fi
audience=${TOKEN_AUDIENCE:-vault}
issuer=${JWT_ISSUER:-https://kubernetes.default.svc.cluster.local}

# Listings are captured first: `grep -q` closing a pipe early fails it under pipefail.
mounts=$($cli secrets list -format=json)
if ! grep -q '"secret/"' <<<"$mounts"; then
  $cli secrets enable -version=2 -path=secret kv >/dev/null
fi

# auth_mount CLUSTER SUFFIX: enables and configures the auth mount of CLUSTER (homelab|nas),
# named after its method plus SUFFIX (kubernetes, kubernetes-nas, jwt-nas, ...); prints
# "<mount> <method>".
auth_mount() {
  local cluster=$1 suffix=$2 method mount host_var ca_var jwt_var keys_var
  method=$(eval echo "\${${cluster^^}_AUTH:-kubernetes}")
  mount=$method$suffix
  local auths
  auths=$($cli auth list -format=json)
  if ! grep -q "\"$mount/\"" <<<"$auths"; then
    $cli auth enable -path="$mount" "$method" >/dev/null
  fi
  case $method in
    kubernetes)
      host_var=${cluster^^}_K8S_HOST; ca_var=${cluster^^}_K8S_CA_FILE
      jwt_var=${cluster^^}_K8S_REVIEWER_JWT_FILE
      $cli write "auth/$mount/config" kubernetes_host="${!host_var:?$host_var is required}" \
        kubernetes_ca_cert=@"${!ca_var:?$ca_var is required}" \
        token_reviewer_jwt=@"${!jwt_var:?$jwt_var is required (the token of vault-auth/vault-token-reviewer)}" \
        disable_local_ca_jwt=true >/dev/null ;;
    jwt)
      keys_var=${cluster^^}_JWT_KEYS_FILE
      $cli write "auth/$mount/config" jwt_validation_pubkeys=@"${!keys_var:?$keys_var is required}" \
        bound_issuer="$issuer" >/dev/null ;;
    *) echo "unknown auth method '$method' for $cluster" >&2; exit 2 ;;
  esac
  echo "$mount $method"
}

# role MOUNT METHOD ROLE NAMESPACE SERVICEACCOUNT POLICY: bound to one service account and to
# the audience its projected token carries (kubernetes/: `audience: vault`), so that neither a
# token for the API server nor one for another system logs in.
role() {
  local mount=$1 method=$2 name=$3 namespace=$4 sa=$5 policy=$6
  if [ "$method" = kubernetes ]; then
    $cli write "auth/$mount/role/$name" bound_service_account_names="$sa" \
      bound_service_account_namespaces="$namespace" audience="$audience" \
      token_policies="$policy" token_ttl=15m token_max_ttl=1h >/dev/null
  else
    $cli write "auth/$mount/role/$name" role_type=jwt user_claim=sub bound_audiences="$audience" \
      bound_subject="system:serviceaccount:$namespace:$sa" \
      token_policies="$policy" token_ttl=15m token_max_ttl=1h >/dev/null
  fi
}

policy() { $cli policy write "$1" "$here/policies/$1.hcl" >/dev/null; }

case $site in
  homelab)
    for p in istio-ca-bootstrap istio-ca-reader-homelab istio-ca-sync-nas; do policy "$p"; done
    read -r mount method < <(auth_mount homelab "")
    role "$mount" "$method" istio-ca-bootstrap istio-system istio-ca-bootstrap istio-ca-bootstrap
    role "$mount" "$method" istio-ca-reader istio-system istio-cacerts-reader istio-ca-reader-homelab
    read -r mount method < <(auth_mount nas -nas)
    role "$mount" "$method" istio-ca-sync istio-system istio-ca-sync istio-ca-sync-nas
    ;;
  nas)
    # pki-client-self: each user reads their own secret/pki/clients/<user> (attach it to the
    # user's identity entity, named after the client; README "Users fetch their own bundle").
    for p in client-issuer eso-pki-reader pki-client-self; do policy "$p"; done
    read -r mount method < <(auth_mount nas "")
    role "$mount" "$method" client-issuer pki client-issuer client-issuer
    # The homelab cluster's ClusterSecretStore nas-vault reads with a token, as in the previous setup:
    #   vault token create -policy=eso-pki-reader -ttl=8760h
    ;;
  *) echo "usage: setup.sh homelab|nas" >&2; exit 2 ;;
esac
echo "configured the $site Vault" >&2
