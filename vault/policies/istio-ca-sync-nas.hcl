# Homelab Vault. nas-sync-job in the NAS cluster: the NAS cluster's cacerts bundle only.
path "secret/data/istio/clusters/nas" {
  capabilities = ["read"]
}
