# NAS Vault. The previous setup's ESO reader (ClusterSecretStore nas-vault in the homelab cluster): the
# public client-CA trust bundle and CRL HAProxy needs, nothing else.
path "secret/data/pki/ca" {
  capabilities = ["read"]
}
