# Homelab Vault. The homelab ExternalSecret `istio-system/istio-cacerts`: the homelab cluster's
# cacerts bundle only (its intermediate key, never the root key).
path "secret/data/istio/clusters/homelab" {
  capabilities = ["read"]
}
