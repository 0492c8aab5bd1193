# Homelab Vault. The bootstrap Job: creates and renews the Istio CA. The only role that reads
# the root key. Create-only and check-and-set writes need create + update.
path "secret/data/istio/ca" {
  capabilities = ["create", "read", "update"]
}
path "secret/data/istio/clusters/*" {
  capabilities = ["create", "read", "update"]
}
# The root rotation's record (`bootstrap-job rotate`); the regular run reads it to leave the
# bundles of a rotation in progress alone.
path "secret/data/istio/rotation" {
  capabilities = ["create", "read", "update"]
}
