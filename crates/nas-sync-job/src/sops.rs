//! SOPS encryption of the Secret manifests written for Git, for age recipients, in the format
//! the `sops` binary and Flux's kustomize-controller (`decryption.provider: sops`) decrypt.
//!
//! What is copied, and from where (getsops/sops v3.13):
//! - `aes/cipher.go`: each value is sealed with AES-256-GCM under the file's 32-byte data key,
//!   a fresh 32-byte IV per value, the value's key path joined by `:` plus a trailing `:` as
//!   additional data, and written as `ENC[AES256_GCM,data:…,iv:…,tag:…,type:str]` (standard
//!   base64); an empty string stays empty.
//! - `sops.go` (`Tree.Encrypt`, `shouldBeEncrypted`, `ToBytes`): a value is encrypted when any
//!   key on its path matches `encrypted_regex`; lists do not add to the path; with
//!   `mac_only_encrypted` the MAC is SHA-512 over the encrypted values' plaintexts in document
//!   order, started with a fixed 32-byte sequence, written as upper-case hex, and sealed like a
//!   value with the `lastmodified` time (RFC 3339) as additional data.
//! - `stores/stores.go` (`metadata`): the `sops:` block (`age`, `lastmodified`, `mac`,
//!   `encrypted_regex`, `mac_only_encrypted`, `version`).
//! - `age/keysource.go`: each recipient's `enc` is the data key encrypted with age to that
//!   recipient, ASCII-armored.
//!
//! The MAC covers only the encrypted values because kustomize may rewrite the rest: Flux
//! (fluxcd/kustomize-controller `internal/decryptor/decryptor.go`, `DecryptResource`) decrypts a
//! resource after `kustomize build`, re-serialised as JSON with sorted keys, so a namespace or
//! label set by a Kustomization, or a different key order, must not break the MAC. The Secret's
//! `data` keys are written sorted, so that order is the same either way.
//!
//! The age encryption (age-encryption.org/v1, X25519 recipients) is done with ring, the
//! workspace's one crypto backend, rather than the `age` crate and its localisation and second
//! crypto stack: X25519, HKDF-SHA-256, HMAC-SHA-256 and ChaCha20-Poly1305 are all ring's. The
//! tests decrypt the output with the real `age` and `sops` binaries.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use aes_gcm::aead::consts::U32;
use aes_gcm::aes::Aes256;
use aes_gcm::{AeadInOut, AesGcm, KeyInit, Nonce};
use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use bech32::Bech32;
use bech32::primitives::decode::CheckedHrpstring;
use pki_core::time::OffsetDateTime;
use pki_core::time::format_description::well_known::Rfc3339;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{aead, agreement, digest, hkdf, hmac};
use serde_json::{Map as Mapping, Value};
use zeroize::Zeroizing;

/// The keys whose values are encrypted: a Secret's data, as in Flux's SOPS guide.
pub const ENCRYPTED_REGEX: &str = "^(data|stringData)$";

/// The format version written to `sops.version`: the first release that reads
/// `mac_only_encrypted` (getsops/sops CHANGELOG, 3.9.0).
const SOPS_FORMAT_VERSION: &str = "3.9.0";

/// `MACOnlyEncryptedInitialization` in getsops/sops `sops.go`: hashed first when the MAC covers
/// only encrypted values, so such a MAC never equals one over all values.
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// An age X25519 recipient (`age1…`, bech32): a public key, safe to show.
#[derive(Clone, PartialEq, Eq)]
pub struct AgeRecipient {
    text: String,
    key: [u8; 32],
}

impl AgeRecipient {
    /// The `age1…` form.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for AgeRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for AgeRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for AgeRecipient {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        // An identity is a private key: never echoed.
        if text.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
            return Err(
                "an age identity (AGE-SECRET-KEY-…) was given; give its public key (age1…, \
                 printed by age-keygen -y), and keep the identity out of this setting"
                    .into(),
            );
        }
        let not_recipient =
            |why: String| format!("'{text}' is not an age recipient (age1…): {why}");
        // age uses bech32, not bech32m (age-encryption.org/v1, "X25519 recipient type").
        let checked =
            CheckedHrpstring::new::<Bech32>(text).map_err(|e| not_recipient(e.to_string()))?;
        if !checked.hrp().as_str().eq_ignore_ascii_case("age") {
            return Err(not_recipient(format!(
                "its prefix is '{}', not 'age'",
                checked.hrp().as_str()
            )));
        }
        let bytes: Vec<u8> = checked.byte_iter().collect();
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            not_recipient(format!(
                "it holds {} bytes, not a 32-byte X25519 key",
                b.len()
            ))
        })?;
        Ok(Self {
            text: text.to_ascii_lowercase(),
            key,
        })
    }
}

/// Parses a list of recipients separated by commas or white space (as `sops --age` takes
/// them), without duplicates; an empty list is an error.
pub fn parse_recipients(text: &str) -> Result<Vec<AgeRecipient>, String> {
    let mut recipients: Vec<AgeRecipient> = Vec::new();
    for word in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        let recipient: AgeRecipient = word.parse()?;
        if !recipients.contains(&recipient) {
            recipients.push(recipient);
        }
    }
    if recipients.is_empty() {
        return Err("no recipient given (age1… public keys, separated by commas)".into());
    }
    Ok(recipients)
}

/// Encrypts `doc` (a manifest) as `sops encrypt --encrypted-regex '^(data|stringData)$'
/// --mac-only-encrypted --age <recipients>` would, adds its `sops:` block, and writes it as YAML.
pub fn seal(
    doc: &Value,
    recipients: &[AgeRecipient],
    now: OffsetDateTime,
) -> anyhow::Result<String> {
    if recipients.is_empty() {
        bail!("no age recipient to encrypt for");
    }
    let Value::Object(top) = doc else {
        bail!("a manifest to encrypt must be a mapping");
    };
    if top.contains_key("sops") {
        bail!("the manifest already has a 'sops' key");
    }
    let rng = SystemRandom::new();
    let mut data_key = Zeroizing::new([0u8; 32]);
    rng.fill(data_key.as_mut())
        .map_err(|_| anyhow!("no randomness for the data key"))?;

    let mut sealer = Sealer {
        rng: &rng,
        key: &data_key,
        mac: digest::Context::new(&digest::SHA512),
    };
    sealer.mac.update(&MAC_ONLY_ENCRYPTED_INIT);
    let mut encrypted = sealer.walk(doc, &mut Vec::new())?;

    let last_modified = now
        .to_offset(pki_core::time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .context("truncating the time")?
        .format(&Rfc3339)
        .context("formatting the time")?;
    let mut mac_hex = String::with_capacity(128);
    for byte in sealer.mac.finish().as_ref() {
        write!(mac_hex, "{byte:02X}").context("formatting the MAC")?;
    }
    let mac = encrypt_value(&rng, &data_key, mac_hex.as_bytes(), "str", &last_modified)?;

    let mut age = Vec::with_capacity(recipients.len());
    for recipient in recipients {
        let mut entry = Mapping::new();
        entry.insert("recipient".into(), recipient.as_str().into());
        entry.insert(
            "enc".into(),
            age_encrypt(&rng, recipient, data_key.as_ref())?.into(),
        );
        age.push(Value::Object(entry));
    }
    let mut metadata = Mapping::new();
    metadata.insert("age".into(), Value::Array(age));
    metadata.insert("lastmodified".into(), last_modified.clone().into());
    metadata.insert("mac".into(), mac.into());
    metadata.insert("encrypted_regex".into(), ENCRYPTED_REGEX.into());
    metadata.insert("mac_only_encrypted".into(), true.into());
    metadata.insert("version".into(), SOPS_FORMAT_VERSION.into());
    if let Value::Object(top) = &mut encrypted {
        top.insert("sops".into(), Value::Object(metadata));
    }
    let text = serde_saphyr::to_string(&encrypted)?;
    // A YAML 1.1 reader (PyYAML, go-yaml v2) takes an unquoted RFC 3339 time for a timestamp,
    // not the string sops authenticates the MAC with, so it is quoted, as sops writes it; a
    // YAML 1.2 emitter sees no reason to.
    let plain = format!("\n  lastmodified: {last_modified}\n");
    let quoted = [
        format!("\n  lastmodified: '{last_modified}'\n"),
        format!("\n  lastmodified: \"{last_modified}\"\n"),
    ];
    if quoted.iter().any(|q| text.contains(q.as_str())) {
        return Ok(text);
    }
    if !text.contains(&plain) {
        bail!("the sops block was not written as expected");
    }
    Ok(text.replacen(&plain, &quoted[0], 1))
}

/// The age recipients a SOPS-encrypted manifest names, sorted, or `None` if it is not encrypted
/// (no `sops.mac`, the test Flux applies: `isSOPSEncryptedResource`).
#[must_use]
pub fn sealed_for(doc: &Value) -> Option<Vec<String>> {
    let sops = doc.get("sops")?;
    sops.get("mac")?.as_str()?;
    let mut recipients: Vec<String> = sops
        .get("age")
        .and_then(Value::as_array)
        .map(|age| {
            age.iter()
                .filter_map(|e| e.get("recipient").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    recipients.sort();
    Some(recipients)
}

/// One pass over the tree: encrypts what `encrypted_regex` selects and hashes it for the MAC.
struct Sealer<'a> {
    rng: &'a SystemRandom,
    key: &'a [u8; 32],
    mac: digest::Context,
}

impl Sealer<'_> {
    fn walk(&mut self, value: &Value, path: &mut Vec<String>) -> anyhow::Result<Value> {
        Ok(match value {
            Value::Object(map) => {
                let mut out = Mapping::with_capacity(map.len());
                for (name, v) in map {
                    path.push(name.clone());
                    let sealed = self.walk(v, path)?;
                    path.pop();
                    out.insert(name.clone(), sealed);
                }
                Value::Object(out)
            }
            // sops's walkSlice: list items keep their parent's path.
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.walk(item, path))
                    .collect::<anyhow::Result<_>>()?,
            ),
            Value::Null => Value::Null,
            leaf if path.iter().any(|p| p == "data" || p == "stringData") => {
                let (plain, kind) = match leaf {
                    Value::String(s) => (s.clone(), "str"),
                    Value::Bool(b) => ((if *b { "True" } else { "False" }).to_owned(), "bool"),
                    Value::Number(n) if n.is_i64() => (n.to_string(), "int"),
                    _ => bail!(
                        "cannot encrypt the value at '{}': only strings, integers and booleans",
                        path.join(".")
                    ),
                };
                self.mac.update(plain.as_bytes());
                if plain.is_empty() {
                    // cipher.go: an empty value is written as an empty string.
                    Value::String(String::new())
                } else {
                    let additional = format!("{}:", path.join(":"));
                    Value::String(encrypt_value(
                        self.rng,
                        self.key,
                        plain.as_bytes(),
                        kind,
                        &additional,
                    )?)
                }
            }
            other => other.clone(),
        })
    }
}

/// `aes.Cipher.Encrypt`: AES-256-GCM with a random 32-byte IV.
fn encrypt_value(
    rng: &SystemRandom,
    key: &[u8; 32],
    plain: &[u8],
    kind: &str,
    additional: &str,
) -> anyhow::Result<String> {
    let cipher = AesGcm::<Aes256, U32>::new_from_slice(key)
        .map_err(|_| anyhow!("the data key is not 32 bytes"))?;
    let mut iv = [0u8; 32];
    rng.fill(&mut iv)
        .map_err(|_| anyhow!("no randomness for an IV"))?;
    let mut data = plain.to_vec();
    let tag = cipher
        .encrypt_inout_detached(
            &Nonce::<U32>::from(iv),
            additional.as_bytes(),
            data.as_mut_slice().into(),
        )
        .map_err(|_| anyhow!("AES-GCM refused a value of {} bytes", plain.len()))?;
    Ok(format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
        STANDARD.encode(&data),
        STANDARD.encode(iv),
        STANDARD.encode(tag)
    ))
}

/// HKDF-SHA-256 to 32 bytes.
fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8]) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&[info], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(out.as_mut()))
        .map_err(|_| anyhow!("HKDF failed"))?;
    Ok(out)
}

/// ChaCha20-Poly1305 with ring, ciphertext and tag.
fn chacha_seal(key: &[u8; 32], nonce: [u8; 12], plain: &[u8]) -> anyhow::Result<Vec<u8>> {
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key).map_err(|_| anyhow!("bad key"))?,
    );
    let mut data = plain.to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::empty(),
        &mut data,
    )
    .map_err(|_| anyhow!("ChaCha20-Poly1305 failed"))?;
    Ok(data)
}

/// Encrypts `plain` (at most one 64 KiB chunk) to one X25519 recipient, in the age v1 format
/// (age-encryption.org/v1: header with one X25519 stanza and its HMAC, then the STREAM
/// payload), ASCII-armored as sops stores it.
fn age_encrypt(rng: &SystemRandom, to: &AgeRecipient, plain: &[u8]) -> anyhow::Result<String> {
    const CHUNK: usize = 64 * 1024;
    if plain.len() > CHUNK {
        bail!("age payload larger than one chunk");
    }
    let fail = |what: &str| anyhow!("age encryption failed: {what}");
    let mut file_key = Zeroizing::new([0u8; 16]);
    rng.fill(file_key.as_mut())
        .map_err(|_| fail("randomness"))?;

    // The X25519 stanza: an ephemeral share, and the file key wrapped under
    // HKDF(shared secret, salt = share || recipient, "age-encryption.org/v1/X25519").
    let ephemeral = agreement::EphemeralPrivateKey::generate(&agreement::X25519, rng)
        .map_err(|_| fail("ephemeral key"))?;
    let share = ephemeral
        .compute_public_key()
        .map_err(|_| fail("ephemeral share"))?;
    let mut salt = share.as_ref().to_vec();
    salt.extend_from_slice(&to.key);
    // ring refuses an all-zero shared secret, as age requires.
    let wrap_key = agreement::agree_ephemeral(
        ephemeral,
        &agreement::UnparsedPublicKey::new(&agreement::X25519, to.key),
        |shared| hkdf_sha256(shared, &salt, b"age-encryption.org/v1/X25519"),
    )
    .map_err(|_| fail("key agreement with the recipient"))??;
    let body = chacha_seal(&wrap_key, [0; 12], file_key.as_ref())?;

    let header = format!(
        "age-encryption.org/v1\n-> X25519 {}\n{}\n---",
        STANDARD_NO_PAD.encode(share.as_ref()),
        STANDARD_NO_PAD.encode(&body)
    );
    let mac_key = hkdf_sha256(file_key.as_ref(), &[], b"header")?;
    let mac = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, mac_key.as_ref()),
        header.as_bytes(),
    );
    let mut file = format!("{header} {}\n", STANDARD_NO_PAD.encode(mac.as_ref())).into_bytes();

    // The payload: a 16-byte nonce, then one final STREAM chunk (counter 0, last-chunk flag).
    let mut nonce = [0u8; 16];
    rng.fill(&mut nonce).map_err(|_| fail("randomness"))?;
    let payload_key = hkdf_sha256(file_key.as_ref(), &nonce, b"payload")?;
    let mut chunk_nonce = [0u8; 12];
    chunk_nonce[11] = 1;
    file.extend_from_slice(&nonce);
    file.extend_from_slice(&chacha_seal(&payload_key, chunk_nonce, plain)?);

    // Armor (age-encryption.org/v1, "ASCII armor"): padded base64 in 64-column lines.
    let encoded = STANDARD.encode(&file);
    let mut armored = String::from("-----BEGIN AGE ENCRYPTED FILE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        armored.push_str(std::str::from_utf8(line).map_err(|_| fail("armor"))?);
        armored.push('\n');
    }
    armored.push_str("-----END AGE ENCRYPTED FILE-----\n");
    Ok(armored)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From age-keygen (Debian's age 1.1.1): `age-keygen | age-keygen -y`.
    const RECIPIENT: &str = "age1xsrqvfglruacgtclvk20vlqppmua6n6lmq60vtjw3phj78nxyslswjxd8u";

    #[test]
    fn recipients_parse_and_bad_ones_are_named() {
        let list = parse_recipients(&format!("{RECIPIENT}, {RECIPIENT}\n")).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].as_str(), RECIPIENT);
        assert_eq!(
            parse_recipients(" , ").unwrap_err(),
            "no recipient given (age1… public keys, separated by commas)"
        );
        let typo = RECIPIENT.replace("xsrq", "xsrp");
        assert!(
            parse_recipients(&typo)
                .unwrap_err()
                .starts_with(&format!("'{typo}' is not an age recipient (age1…): ")),
            "a wrong checksum is refused"
        );
        assert!(
            parse_recipients("ssh-ed25519")
                .unwrap_err()
                .starts_with("'ssh-ed25519' is not an age recipient (age1…): ")
        );
        let secret = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ";
        let err = parse_recipients(secret).unwrap_err();
        assert!(
            !err.contains(secret) && err.contains("age identity"),
            "{err}"
        );
    }

    #[test]
    fn sealing_encrypts_only_data_and_names_its_recipients() {
        let doc: Value = job_support::yaml::from_str::<Value>(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: cacerts\n  labels:\n    data: x\n\
             data:\n  a.pem: UEVN\n  empty: ''\ntype: Opaque\n",
        )
        .unwrap();
        let recipients = parse_recipients(RECIPIENT).unwrap();
        let text = seal(&doc, &recipients, OffsetDateTime::UNIX_EPOCH).unwrap();
        assert!(
            text.contains("\n  lastmodified: '1970-01-01T00:00:00Z'\n")
                || text.contains("\n  lastmodified: \"1970-01-01T00:00:00Z\"\n"),
            "{text}"
        );
        let sealed: Value = job_support::yaml::from_str::<Value>(&text).unwrap();
        let a = sealed["data"]["a.pem"].as_str().unwrap();
        assert!(
            a.starts_with("ENC[AES256_GCM,data:") && a.ends_with(",type:str]"),
            "{a}"
        );
        assert_eq!(sealed["data"]["empty"], "");
        // sops's rule: any key on the path matching the regex, so this label too.
        assert!(
            sealed["metadata"]["labels"]["data"]
                .as_str()
                .unwrap()
                .starts_with("ENC[")
        );
        assert_eq!(sealed["metadata"]["name"], "cacerts");
        assert_eq!(sealed["sops"]["lastmodified"], "1970-01-01T00:00:00Z");
        assert_eq!(sealed_for(&sealed), Some(vec![RECIPIENT.to_owned()]));
        assert_eq!(sealed_for(&doc), None);
        let enc = sealed["sops"]["age"][0]["enc"].as_str().unwrap();
        assert!(enc.starts_with("-----BEGIN AGE ENCRYPTED FILE-----\n"));
        // Fresh data key and IVs each time.
        let again: Value = job_support::yaml::from_str::<Value>(
            &seal(&doc, &recipients, OffsetDateTime::UNIX_EPOCH).unwrap(),
        )
        .unwrap();
        assert_ne!(again["data"]["a.pem"], sealed["data"]["a.pem"]);
        assert!(seal(&sealed, &recipients, OffsetDateTime::UNIX_EPOCH).is_err());
    }
}
