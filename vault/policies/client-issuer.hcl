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
# The client index (a summary of every user entry with its KV version), and OpenBao's listing of
# the entries with their versions in one request, from which a run proves nothing changed.
path "secret/data/pki/clients-index" {
  capabilities = ["create", "read", "update"]
}
path "secret/detailed-metadata/pki/clients" {
  capabilities = ["list"]
}
# Adopting the previous scripts' client CA, which they kept, key included, in secret/pki/ca: the
# key moves to its own path (PREVIOUS_CA=trusted; with PREVIOUS_CA=issuer to pki/issuer), then
# the versions of secret/pki/ca that held it are destroyed, because the bundle's readers
# (eso-pki-reader) can read every version of that entry. KV v2 destroy is an update on
# <mount>/destroy/<path>.
path "secret/data/pki/previous-ca" {
  capabilities = ["create", "read", "update"]
}
path "secret/destroy/pki/ca" {
  capabilities = ["update"]
}
