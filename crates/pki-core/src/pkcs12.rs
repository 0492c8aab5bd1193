//! PKCS#12 bundles of a client key, its certificate and the CA chain, in the two encodings
//! importers actually accept: `modern` (what OpenSSL 3 writes and reads by default) and
//! `legacy` (what older macOS keychains and Windows need).

use std::fmt;
use std::str::FromStr;

use p12_keystore::{
    Certificate as P12Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm,
    Pkcs12ImportPolicy, PrivateKey, PrivateKeyChain,
};
use zeroize::Zeroizing;

use crate::cert::Certificate;
use crate::client::ClientCredential;
use crate::error::{PkiError, Result};

/// OpenSSL's default PBKDF iteration count for `pkcs12 -export`.
pub const DEFAULT_ITERATIONS: u32 = 2048;

/// How the bundle is encrypted and authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pkcs12Profile {
    /// PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) with an HMAC-SHA256 MAC.
    #[default]
    Modern,
    /// PBE-SHA1-3DES with an HMAC-SHA1 MAC, for importers that predate PBES2.
    Legacy,
}

impl Pkcs12Profile {
    /// The name used in configuration.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Modern => "modern",
            Self::Legacy => "legacy",
        }
    }
}

impl fmt::Display for Pkcs12Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Pkcs12Profile {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "modern" => Ok(Self::Modern),
            "legacy" => Ok(Self::Legacy),
            _ => Err(PkiError::InvalidParameter {
                name: "PKCS#12 profile",
                reason: format!("'{s}' is not one of modern, legacy"),
            }),
        }
    }
}

/// A non-empty PKCS#12 password, wiped on drop and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs12Password(Zeroizing<String>);

impl Pkcs12Password {
    /// Refuses an empty password: several importers then skip the MAC check entirely, and
    /// others refuse the file.
    pub fn new(password: impl Into<String>) -> Result<Self> {
        let password = Zeroizing::new(password.into());
        if password.is_empty() {
            return Err(PkiError::InvalidParameter {
                name: "PKCS#12 password",
                reason: "must not be empty".into(),
            });
        }
        Ok(Self(password))
    }

    /// A random password of 24 characters from an alphabet without look-alikes (about 137
    /// bits), easy to type from a password manager onto a phone.
    pub fn generate() -> Result<Self> {
        const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let mut bytes = [0u8; 24];
        let mut password = String::with_capacity(bytes.len());
        while password.len() < bytes.len() {
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(
                |_| PkiError::Generation {
                    what: "PKCS#12 password",
                    reason: "the system random number generator failed".into(),
                },
            )?;
            // Rejection sampling keeps every character equally likely.
            let limit = 256 - 256 % ALPHABET.len();
            for b in bytes {
                if usize::from(b) < limit && password.len() < bytes.len() {
                    password.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
                }
            }
        }
        bytes.fill(0);
        Self::new(password)
    }

    /// The password, for handing to its owner.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pkcs12Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pkcs12Password(<redacted>)")
    }
}

/// Everything that goes into one bundle.
#[derive(Debug, Clone, Copy)]
pub struct Pkcs12Request<'a> {
    /// The client key and certificate.
    pub credential: &'a ClientCredential,
    /// The CA chain above the client certificate, nearest first.
    pub ca_chain: &'a [&'a Certificate],
    /// The name importers show for the entry.
    pub friendly_name: &'a str,
    /// Encryption and MAC password.
    pub password: &'a Pkcs12Password,
    /// Encryption profile.
    pub profile: Pkcs12Profile,
    /// PBKDF and MAC iteration count.
    pub iterations: u32,
}

/// Builds the DER-encoded PKCS#12 file.
pub fn build_pkcs12(request: &Pkcs12Request<'_>) -> Result<Zeroizing<Vec<u8>>> {
    if request.iterations == 0 || request.iterations > 10_000_000 {
        return Err(PkiError::InvalidParameter {
            name: "PKCS#12 iterations",
            reason: format!("must be between 1 and 10000000, got {}", request.iterations),
        });
    }
    if request.friendly_name.is_empty() {
        return Err(PkiError::InvalidParameter {
            name: "PKCS#12 friendly name",
            reason: "must not be empty".into(),
        });
    }
    let encode = |e: p12_keystore::error::Error| PkiError::Generation {
        what: "PKCS#12 bundle",
        reason: e.to_string(),
    };
    let leaf = &request.credential.certificate;
    let mut certs = vec![P12Certificate::from_der(leaf.der()).map_err(encode)?];
    for ca in request.ca_chain {
        certs.push(P12Certificate::from_der(ca.der()).map_err(encode)?);
    }
    let key = PrivateKey::from_der(&request.credential.key.to_pkcs8_der()).map_err(encode)?;
    // The local key id ties the key bag to its certificate bag; importers match on it.
    let local_key_id = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, leaf.der());
    let chain = PrivateKeyChain::new(local_key_id.as_ref(), key, certs);
    let mut store = KeyStore::new();
    store.add_entry(request.friendly_name, KeyStoreEntry::PrivateKeyChain(chain));
    let (encryption, mac) = match request.profile {
        Pkcs12Profile::Modern => (
            EncryptionAlgorithm::PbeWithHmacSha256AndAes256,
            MacAlgorithm::HmacSha256,
        ),
        Pkcs12Profile::Legacy => (
            EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc,
            MacAlgorithm::HmacSha1,
        ),
    };
    store
        .writer(request.password.expose())
        .encryption_algorithm(encryption)
        .encryption_iterations(request.iterations)
        .mac_algorithm(mac)
        .mac_iterations(request.iterations)
        .write()
        .map(Zeroizing::new)
        .map_err(encode)
}

/// What a PKCS#12 file holds, read back with its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs12Contents {
    /// The entry's friendly name.
    pub friendly_name: String,
    /// The certificates of the key's chain, leaf first.
    pub chain: Vec<Certificate>,
}

/// Opens a PKCS#12 file: checks the MAC with `password`, decrypts the key and returns the
/// chain. `object` names the file in errors.
pub fn read_pkcs12(der: &[u8], password: &str, object: &str) -> Result<Pkcs12Contents> {
    let store = KeyStore::from_pkcs12(der, password, Pkcs12ImportPolicy::Strict).map_err(|e| {
        PkiError::InvalidParameter {
            name: "PKCS#12 bundle",
            reason: format!("{object} cannot be opened: {e}"),
        }
    })?;
    let Some((alias, chain)) = store.private_key_chain() else {
        return Err(PkiError::InvalidParameter {
            name: "PKCS#12 bundle",
            reason: format!("{object} holds no private key with a certificate"),
        });
    };
    let chain = chain
        .certs()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Certificate::from_der(
                c.as_der().to_vec(),
                format!("{object} certificate {}", i + 1),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Pkcs12Contents {
        friendly_name: alias.to_owned(),
        chain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_long_distinct_and_unambiguous() {
        let a = Pkcs12Password::generate().unwrap();
        let b = Pkcs12Password::generate().unwrap();
        assert_eq!(a.expose().len(), 24);
        assert_ne!(a.expose(), b.expose());
        assert!(!a.expose().contains(['0', 'O', 'l', '1', 'I']));
    }
}
