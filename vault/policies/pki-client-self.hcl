# NAS Vault. A user of the client PKI fetches their own bundle and nothing else:
#   vault kv get -field=p12 secret/pki/clients/<user>
# The path is templated on the name of the caller's identity entity (Vault ACL templating,
# "identity.entity.name"; OpenBao the same), so it works with any auth method (LDAP,
# userpass, OIDC) once the user's entity is named after their client name. vault/setup.sh
# writes it; attach it to each user's entity (README, "Users fetch their own bundle").
path "secret/data/pki/clients/{{identity.entity.name}}" {
  capabilities = ["read"]
}
