//! Private keys: generation for the supported algorithms, and parsing of the PEM forms that
//! istiod and HAProxy accept (PKCS#8, SEC1 `EC PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY`), with
//! encrypted keys recognised and refused by name rather than reported as garbage.

use std::fmt;
use std::str::FromStr;

use rcgen::{
    KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, SignatureAlgorithm,
};
use rsa::pkcs8::EncodePrivateKey;
use zeroize::Zeroizing;

use crate::error::{PkiError, Result};

/// The key types the system can generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 with SHA-256: Istio's own default, fast and small.
    #[default]
    EcdsaP256,
    /// ECDSA on NIST P-384 with SHA-384.
    EcdsaP384,
    /// RSA 4096 with PKCS#1 v1.5 SHA-256 signatures, for consumers that cannot use ECDSA.
    Rsa4096,
}

impl KeyAlgorithm {
    /// The name used in configuration (`ecdsa-p256`, `ecdsa-p384`, `rsa-4096`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Rsa4096 => "rsa-4096",
        }
    }

    fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &PKCS_ECDSA_P384_SHA384,
            Self::Rsa4096 => &PKCS_RSA_SHA256,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ecdsa-p256" | "p256" | "p-256" | "ec" | "ecdsa" => Ok(Self::EcdsaP256),
            "ecdsa-p384" | "p384" | "p-384" => Ok(Self::EcdsaP384),
            "rsa-4096" | "rsa4096" | "rsa" => Ok(Self::Rsa4096),
            _ => Err(PkiError::InvalidParameter {
                name: "key algorithm",
                reason: format!("'{s}' is not one of ecdsa-p256, ecdsa-p384, rsa-4096"),
            }),
        }
    }
}

/// A private key together with what is needed to sign with it.
///
/// Its `Debug` output never shows key material.
pub struct SigningKey {
    pair: KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.pair.algorithm())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a fresh key of the given algorithm from the operating system's RNG.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self> {
        let pair = match algorithm {
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
                KeyPair::generate_for(algorithm.signature_algorithm())
                    .map_err(|e| generation("private key", &e))?
            }
            KeyAlgorithm::Rsa4096 => {
                let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 4096)
                    .map_err(|e| generation("RSA private key", &e))?;
                let der = key
                    .to_pkcs8_der()
                    .map_err(|e| generation("RSA private key", &e))?;
                KeyPair::from_pkcs8_der_and_sign_algo(
                    &der.as_bytes().into(),
                    algorithm.signature_algorithm(),
                )
                .map_err(|e| generation("RSA private key", &e))?
            }
        };
        Ok(Self { pair })
    }

    /// Parses an unencrypted private key in PEM: PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY`
    /// or PKCS#1 `RSA PRIVATE KEY`. `object` names the input in errors.
    pub fn from_pem(pem_text: &str, object: &str) -> Result<Self> {
        let blocks = pem::parse_many(pem_text).map_err(|e| PkiError::InvalidPem {
            object: object.to_owned(),
            reason: e.to_string(),
        })?;
        let mut keys = blocks.iter().filter(|b| b.tag().ends_with("PRIVATE KEY"));
        let Some(block) = keys.next() else {
            return Err(PkiError::MissingPem {
                object: object.to_owned(),
                expected: "PRIVATE KEY",
            });
        };
        if keys.next().is_some() {
            return Err(invalid_key(object, "holds more than one private key"));
        }
        let encrypted_header = block
            .headers()
            .get("Proc-Type")
            .is_some_and(|v| v.contains("ENCRYPTED"));
        if block.tag() == "ENCRYPTED PRIVATE KEY" || encrypted_header {
            return Err(PkiError::EncryptedKey {
                object: object.to_owned(),
            });
        }
        let der = Zeroizing::new(block.contents().to_vec());
        let pair = match block.tag() {
            "PRIVATE KEY" => KeyPair::try_from(der.as_slice())
                .map_err(|e| invalid_key(object, &format!("unsupported PKCS#8 key: {e}")))?,
            "EC PRIVATE KEY" => from_sec1(&der, object)?,
            "RSA PRIVATE KEY" => {
                let pkcs8 = Zeroizing::new(wrap_pkcs8(RSA_ALGORITHM_ID, &der));
                KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_slice().into(), &PKCS_RSA_SHA256)
                    .map_err(|e| invalid_key(object, &format!("unsupported PKCS#1 key: {e}")))?
            }
            other => {
                return Err(invalid_key(
                    object,
                    &format!("unsupported PEM label '{other}'"),
                ));
            }
        };
        Ok(Self { pair })
    }

    /// The key as unencrypted PKCS#8 PEM, the form `ca-key.pem` takes.
    #[must_use]
    pub fn to_pkcs8_pem(&self) -> SecretPem {
        SecretPem(Zeroizing::new(self.pair.serialize_pem()))
    }

    /// The key as PKCS#8 DER.
    #[must_use]
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.pair.serialize_der())
    }

    /// The raw subject public key, as it appears in a certificate's `SubjectPublicKeyInfo`.
    #[must_use]
    pub fn public_key_raw(&self) -> &[u8] {
        self.pair.public_key_raw()
    }

    /// Which algorithm the key is for, when it is one we generate.
    #[must_use]
    pub fn algorithm(&self) -> Option<KeyAlgorithm> {
        let alg = self.pair.algorithm();
        [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa4096,
        ]
        .into_iter()
        .find(|a| a.signature_algorithm() == alg)
    }

    pub(crate) fn pair(&self) -> &KeyPair {
        &self.pair
    }
}

/// A PEM-encoded private key held in memory that is wiped on drop and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPem(Zeroizing<String>);

impl SecretPem {
    /// Wraps PEM text read from storage.
    #[must_use]
    pub fn new(pem: String) -> Self {
        Self(Zeroizing::new(pem))
    }

    /// The PEM text, for writing to its destination.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

fn generation(what: &'static str, e: &dyn fmt::Display) -> PkiError {
    PkiError::Generation {
        what,
        reason: e.to_string(),
    }
}

fn invalid_key(object: &str, reason: &str) -> PkiError {
    PkiError::InvalidKey {
        object: object.to_owned(),
        reason: reason.to_owned(),
    }
}

// AlgorithmIdentifier DER bodies (without the outer SEQUENCE header).
// rsaEncryption, NULL parameters.
const RSA_ALGORITHM_ID: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
// id-ecPublicKey, prime256v1.
const EC_P256_ALGORITHM_ID: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
    0x03, 0x01, 0x07,
];
// id-ecPublicKey, secp384r1.
const EC_P384_ALGORITHM_ID: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22,
];

/// SEC1 keys carry their curve in an optional field; ring checks it against the PKCS#8
/// algorithm, so trying each supported curve finds the right one without a DER parser.
fn from_sec1(sec1: &[u8], object: &str) -> Result<KeyPair> {
    let candidates = [
        (EC_P256_ALGORITHM_ID, &PKCS_ECDSA_P256_SHA256),
        (EC_P384_ALGORITHM_ID, &PKCS_ECDSA_P384_SHA384),
    ];
    for (algorithm_id, signature) in candidates {
        let pkcs8 = Zeroizing::new(wrap_pkcs8(algorithm_id, sec1));
        if let Ok(pair) = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_slice().into(), signature)
        {
            return Ok(pair);
        }
    }
    Err(invalid_key(
        object,
        "not a P-256 or P-384 SEC1 key with its public key included",
    ))
}

/// `PrivateKeyInfo ::= SEQUENCE { version 0, AlgorithmIdentifier, OCTET STRING key }`.
fn wrap_pkcs8(algorithm_id: &[u8], key: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    der_tlv(0x30, algorithm_id, &mut body);
    der_tlv(0x04, key, &mut body);
    let mut out = Vec::with_capacity(body.len() + 4);
    der_tlv(0x30, &body, &mut out);
    out
}

fn der_tlv(tag: u8, value: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa4096,
        ] {
            assert_eq!(alg.name().parse::<KeyAlgorithm>(), Ok(alg));
        }
        let err = "dsa".parse::<KeyAlgorithm>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid key algorithm: 'dsa' is not one of ecdsa-p256, ecdsa-p384, rsa-4096"
        );
    }

    #[test]
    fn generated_keys_parse_back_from_pkcs8() {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
            let key = SigningKey::generate(alg).unwrap();
            let parsed = SigningKey::from_pem(key.to_pkcs8_pem().expose(), "k.pem").unwrap();
            assert_eq!(parsed.public_key_raw(), key.public_key_raw());
            assert_eq!(parsed.algorithm(), Some(alg));
        }
    }

    #[test]
    fn encrypted_keys_are_named_as_such() {
        let pkcs8 =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert_eq!(
            SigningKey::from_pem(pkcs8, "ca-key.pem").unwrap_err(),
            PkiError::EncryptedKey {
                object: "ca-key.pem".into()
            }
        );
        let legacy = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert_eq!(
            SigningKey::from_pem(legacy, "ca-key.pem")
                .unwrap_err()
                .to_string(),
            "ca-key.pem is an encrypted private key; an unencrypted key is required"
        );
    }

    #[test]
    fn debug_output_hides_key_material() {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let pem = key.to_pkcs8_pem();
        assert_eq!(format!("{pem:?}"), "SecretPem(<redacted>)");
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn long_der_lengths_are_encoded_in_long_form() {
        let mut out = Vec::new();
        der_tlv(0x04, &[0u8; 300], &mut out);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }
}
