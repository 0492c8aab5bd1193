# NAS Vault. client-issuer-job: the client CA and its key, the public bundle, and every user
# entry (listing finds users removed from the clients file, to revoke them).
path "secret/data/pki/ca" {
  capabilities = ["create", "read", "update"]
}
path "secret/data/pki/issuer" {
  capabilities = ["create", "read", "update"]
}
path "secret/data/pki/clients/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/pki/clients" {
  capabilities = ["list"]
}
path "secret/metadata/pki/clients/*" {
  capabilities = ["list"]
}
