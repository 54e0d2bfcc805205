//! Private keys sealed at rest: AES-256-GCM (ring) under a 32-byte key the
//! control replicas read from a file (`TANDEM_SECRETS_KEY_FILE`), a fresh
//! random nonce per seal, the certificate's name as associated data (a
//! sealed key moved to another name does not open).
//!
//! Sealed form: `1` (the format) ‖ nonce (12 bytes) ‖ ciphertext ‖ tag.

use std::fmt;
use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::Error;

const FORMAT: u8 = 1;

/// The key private keys are sealed under.
pub struct SecretsKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretsKey(<redacted>)")
    }
}

impl SecretsKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| Error::SecretsKey(format!("must be 32 bytes (got {})", bytes.len())))?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// Reads the key from `path`: 64 hex digits (`openssl rand -hex 32`),
    /// surrounding whitespace ignored, or exactly 32 raw bytes.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let raw = std::fs::read(path)
            .map_err(|e| Error::SecretsKey(format!("cannot read {}: {e}", path.display())))?;
        let text = std::str::from_utf8(&raw).map(str::trim).unwrap_or("");
        if text.len() == 64 {
            let bytes = unhex(text).ok_or_else(|| {
                Error::SecretsKey(format!("{}: 64 characters but not hex", path.display()))
            })?;
            return Self::from_bytes(&bytes);
        }
        if raw.len() == 32 {
            return Self::from_bytes(&raw);
        }
        Err(Error::SecretsKey(format!(
            "{} must hold 64 hex digits (openssl rand -hex 32) or 32 raw bytes",
            path.display()
        )))
    }

    /// Seals `plaintext` for the certificate `name`.
    pub fn seal(&self, name: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the system's random source works");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + 16);
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut body,
            )
            .expect("AES-GCM seals any length a key can have");
        out.extend_from_slice(&body);
        out
    }

    /// Opens what [`SecretsKey::seal`] made for `name`.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        let fail = |why: &str| Error::Unseal {
            name: name.to_owned(),
            why: why.to_owned(),
        };
        let (&format, rest) = sealed.split_first().ok_or_else(|| fail("empty"))?;
        if format != FORMAT {
            return Err(fail("unknown format"));
        }
        if rest.len() < NONCE_LEN + 16 {
            return Err(fail("too short"));
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail("bad nonce"))?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut body)
            .map_err(|_| fail("wrong secrets key, or the data was altered"))?;
        Ok(plain.to_vec())
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Bytes from hex (either case); `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|p| {
            let d = |c: u8| (c as char).to_digit(16);
            Some((d(p[0])? * 16 + d(p[1])?) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_under_the_same_key_and_name() {
        let k = SecretsKey::from_bytes(&[7u8; 32]).unwrap();
        let sealed = k.seal("shop", b"-----BEGIN PRIVATE KEY-----");
        assert!(!sealed.windows(5).any(|w| w == b"BEGIN"), "encrypted");
        assert_eq!(
            k.open("shop", &sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert_ne!(
            sealed,
            k.seal("shop", b"-----BEGIN PRIVATE KEY-----"),
            "fresh nonce"
        );
        assert!(k.open("other", &sealed).is_err(), "bound to its name");
        let other = SecretsKey::from_bytes(&[8u8; 32]).unwrap();
        assert!(other.open("shop", &sealed).is_err());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(k.open("shop", &altered).is_err());
        assert!(SecretsKey::from_bytes(&[0u8; 16]).is_err());
    }

    #[test]
    fn reads_hex_or_raw_key_files() {
        let dir = std::env::temp_dir().join(format!("tandem-tls-seal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hexfile = dir.join("hex");
        std::fs::write(&hexfile, format!("{}\n", "ab".repeat(32))).unwrap();
        let a = SecretsKey::from_file(&hexfile).unwrap();
        let raw = dir.join("raw");
        std::fs::write(&raw, [0xabu8; 32]).unwrap();
        let b = SecretsKey::from_file(&raw).unwrap();
        assert_eq!(b.open("n", &a.seal("n", b"x")).unwrap(), b"x");
        let bad = dir.join("bad");
        std::fs::write(&bad, "short").unwrap();
        assert!(SecretsKey::from_file(&bad).is_err());
        assert!(SecretsKey::from_file(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(unhex(&hex(&[0, 255, 16])).unwrap(), [0, 255, 16]);
    }
}
