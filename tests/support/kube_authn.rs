//! Service-account tokens as a kube-apiserver issues and authenticates them, for the fake API
//! server. Copied behaviour, from kubernetes/kubernetes:
//! - `pkg/serviceaccount/claims.go` (`Claims`, `validator.Validate`): bound tokens carry `iss`,
//!   `sub`, `aud`, `exp`, `iat`, `nbf`, `jti` and a `kubernetes.io` claim naming the namespace
//!   and the service account with its uid; validation refuses an expired or not yet valid token
//!   (one minute of leeway, go-jose's `DefaultLeeway`), a deleted service account, and one
//!   recreated under the same name (another uid);
//! - `pkg/serviceaccount/legacy.go` (`LegacyClaims`, `legacyValidator`): Secret-based tokens,
//!   issuer `kubernetes/serviceaccount`, valid while their Secret holds exactly that token;
//! - `pkg/serviceaccount/jwt.go` (`AuthenticateToken`): a token of another issuer is not ours; a
//!   token without `aud` (legacy) counts as carrying the API server's audiences; the requested
//!   audiences default to the API server's; the token is refused unless the two intersect, and
//!   the intersection is the audiences of the answer.
//!
//! The signing key is ES256 (P-256), one of the algorithms `--service-account-key-file` takes.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::{Value, json};

use super::tools::uuid_text;

/// `--service-account-issuer`, and so (the default of `--api-audiences`) the audience every
/// token for the API server itself carries.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The issuer of Secret-based (legacy) tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
/// go-jose's `jwt.DefaultLeeway`, which the claims validator uses.
const LEEWAY_SECS: i64 = 60;

pub fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// The cluster's service-account signing key.
pub struct SigningKey {
    key: EcdsaKeyPair,
}

impl SigningKey {
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Self { key }
    }

    /// The public key as SPKI PEM, as `kubectl get --raw /openid/v1/jwks` converted to PEM
    /// gives it (what Vault's JWT auth takes as `jwt_validation_pubkeys`).
    pub fn public_key_pem(&self) -> String {
        // SubjectPublicKeyInfo for id-ecPublicKey / prime256v1, followed by the point.
        let mut der = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        der.extend_from_slice(self.key.public_key().as_ref());
        let body = STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }

    /// A compact JWS over `claims`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": "fake-apiserver"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    fn verify(&self, token: &str) -> bool {
        let Some((input, signature)) = token.rsplit_once('.') else {
            return false;
        };
        let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(input.as_bytes(), &signature)
            .is_ok()
    }
}

/// The claims of a bound token (`TokenRequest`, a projected `serviceAccountToken` volume) for
/// `namespace/name` whose uid is `uid`: `audiences` (the API server's when empty), valid for
/// `expiration_secs` from now.
pub fn bound_claims(
    namespace: &str,
    name: &str,
    uid: &str,
    audiences: &[&str],
    expiration_secs: i64,
) -> Value {
    let now = now();
    let audiences: Vec<&str> = if audiences.is_empty() {
        vec![ISSUER]
    } else {
        audiences.to_vec()
    };
    json!({
        "aud": audiences,
        "exp": now + expiration_secs,
        "iat": now,
        "iss": ISSUER,
        "jti": random_uid(),
        "nbf": now,
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": uid},
        },
    })
}

/// The claims of the legacy token the token controller writes into a Secret of type
/// `kubernetes.io/service-account-token`.
pub fn legacy_claims(namespace: &str, secret: &str, name: &str, uid: &str) -> Value {
    json!({
        "iss": LEGACY_ISSUER,
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/secret.name": secret,
        "kubernetes.io/serviceaccount/service-account.name": name,
        "kubernetes.io/serviceaccount/service-account.uid": uid,
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
    })
}

/// A random UUID-shaped identifier (object uids, token ids).
pub fn random_uid() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes).unwrap();
    uuid_text(&bytes)
}

/// An authenticated user, as `user.Info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// No credentials at all: anonymous requests are on by default (`--anonymous-auth`), and
    /// RBAC then decides (`pkg/kubeapiserver/authenticator/config.go`).
    pub fn anonymous() -> Self {
        Self {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
            extra: BTreeMap::new(),
        }
    }

    fn service_account(namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            uid: uid.to_owned(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            extra: BTreeMap::new(),
        }
    }
}

/// The objects a token's validity depends on.
pub trait TokenObjects {
    /// The uid of a service account that exists.
    fn service_account_uid(&self, namespace: &str, name: &str) -> Option<String>;
    /// The `token` of a Secret that exists.
    fn secret_token(&self, namespace: &str, name: &str) -> Option<String>;
}

/// Why a token was not authenticated; `None` in `detail` when it is simply not one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub detail: Option<String>,
}

impl Refusal {
    fn not_ours() -> Self {
        Self { detail: None }
    }

    fn because(detail: impl Into<String>) -> Self {
        Self {
            detail: Some(detail.into()),
        }
    }

    /// `TokenReview.status.error` as the API server words it: the bearer-token authenticator's
    /// "invalid bearer token", then the service-account authenticator's reason
    /// (`staging/src/k8s.io/apiserver/pkg/authentication/request/bearertoken`, aggregated).
    pub fn review_error(&self) -> String {
        match &self.detail {
            Some(detail) => format!("[invalid bearer token, {detail}]"),
            None => "[invalid bearer token, token lookup failed]".into(),
        }
    }
}

/// Authenticates `token` for `requested` audiences (the API server's when `None`). On success,
/// the user and the audiences of the answer (the intersection).
pub fn authenticate(
    key: &SigningKey,
    objects: &impl TokenObjects,
    token: &str,
    requested: Option<&[String]>,
) -> Result<(User, Vec<String>), Refusal> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(Refusal::not_ours());
    }
    let Some(claims) = URL_SAFE_NO_PAD
        .decode(parts[1])
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return Err(Refusal::not_ours());
    };
    // `hasCorrectIssuer`: another issuer's token is left to other authenticators.
    let legacy = match claims["iss"].as_str() {
        Some(ISSUER) => false,
        Some(LEGACY_ISSUER) => true,
        _ => return Err(Refusal::not_ours()),
    };
    if !key.verify(token) {
        return Err(Refusal::because(
            "go-jose/go-jose: error in cryptographic primitive",
        ));
    }
    let api_audiences = vec![ISSUER.to_owned()];
    let token_audiences: Vec<String> = match &claims["aud"] {
        Value::String(a) => vec![a.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let token_audiences = if token_audiences.is_empty() {
        api_audiences.clone()
    } else {
        token_audiences
    };
    let requested: Vec<String> = requested.map_or(api_audiences, <[String]>::to_vec);
    let audiences: Vec<String> = token_audiences
        .iter()
        .filter(|a| requested.contains(a))
        .cloned()
        .collect();
    if audiences.is_empty() {
        return Err(Refusal::because(format!(
            "token audiences {} is invalid for the target audiences {}",
            go_quoted(&token_audiences),
            go_quoted(&requested)
        )));
    }
    let user = if legacy {
        validate_legacy(token, &claims, objects)?
    } else {
        validate_bound(&claims, objects)?
    };
    Ok((user, audiences))
}

fn validate_bound(claims: &Value, objects: &impl TokenObjects) -> Result<User, Refusal> {
    let now = now();
    if claims["exp"]
        .as_i64()
        .is_some_and(|exp| now > exp + LEEWAY_SECS)
    {
        return Err(Refusal::because("service account token has expired"));
    }
    if claims["nbf"]
        .as_i64()
        .is_some_and(|nbf| now + LEEWAY_SECS < nbf)
    {
        return Err(Refusal::because("service account token is not valid yet"));
    }
    let k8s = &claims["kubernetes.io"];
    let (Some(namespace), Some(name), Some(uid)) = (
        k8s["namespace"].as_str(),
        k8s["serviceaccount"]["name"].as_str(),
        k8s["serviceaccount"]["uid"].as_str(),
    ) else {
        return Err(Refusal::because(
            "service account token claims could not be validated",
        ));
    };
    let current = objects
        .service_account_uid(namespace, name)
        .ok_or_else(|| Refusal::because(format!("serviceaccounts \"{name}\" not found")))?;
    if current != uid {
        return Err(Refusal::because(format!(
            "service account UID ({current}) does not match claim ({uid})"
        )));
    }
    let mut user = User::service_account(namespace, name, uid);
    if let Some(jti) = claims["jti"].as_str() {
        user.extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec![format!("JTI={jti}")],
        );
    }
    Ok(user)
}

fn validate_legacy(
    token: &str,
    claims: &Value,
    objects: &impl TokenObjects,
) -> Result<User, Refusal> {
    let field = |k: &str| claims[format!("kubernetes.io/serviceaccount/{k}")].as_str();
    let (Some(namespace), Some(secret), Some(name), Some(uid)) = (
        field("namespace"),
        field("secret.name"),
        field("service-account.name"),
        field("service-account.uid"),
    ) else {
        return Err(Refusal::because(
            "service account token claims could not be validated",
        ));
    };
    // The token is valid only while its Secret exists and still holds it.
    let stored = objects
        .secret_token(namespace, secret)
        .ok_or_else(|| Refusal::because("token has been invalidated"))?;
    if stored != token {
        return Err(Refusal::because("token does not match server's copy"));
    }
    let current = objects
        .service_account_uid(namespace, name)
        .ok_or_else(|| Refusal::because(format!("serviceaccounts \"{name}\" not found")))?;
    if current != uid {
        return Err(Refusal::because(format!(
            "ServiceAccount UID ({current}) does not match claim ({uid})"
        )));
    }
    Ok(User::service_account(namespace, name, uid))
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn go_quoted(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("[{}]", quoted.join(" "))
}
