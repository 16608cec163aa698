//! Encryption of channel credentials at rest (XChaCha20-Poly1305), with a key id stored
//! beside each ciphertext so keys can be rotated.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key text is not 32 bytes of base64.
    #[error("the secret key must be 32 bytes encoded as base64")]
    BadKey,
    /// The ciphertext was sealed with another key.
    #[error("credentials were encrypted with key `{0}`, which is not configured")]
    UnknownKey(String),
    /// The ciphertext was altered or truncated.
    #[error("credentials could not be decrypted (corrupted or wrong key)")]
    Corrupt,
}

/// The secret key that encrypts credentials. Its `Debug` never prints the key.
#[derive(Clone)]
pub struct SecretKey {
    key: [u8; 32],
    id: String,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.id)
    }
}

/// Ciphertext plus the id of the key that sealed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Which key sealed it (first 8 hex digits of SHA-256 of the key).
    pub key_id: String,
    /// 24-byte nonce followed by the ciphertext and tag.
    pub data: Vec<u8>,
}

impl SecretKey {
    /// Makes a fresh random key.
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self::from_bytes(key)
    }

    /// Builds a key from raw bytes.
    pub fn from_bytes(key: [u8; 32]) -> Self {
        let id = hex::encode(&Sha256::digest(key)[..4]);
        Self { key, id }
    }

    /// Parses a base64 key (as kept in the key file or `VORONKA_SECRET_KEY`).
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| CryptoError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(Self::from_bytes(key))
    }

    /// The key as base64, for writing the key file.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key)
    }

    /// The key's id, stored with each ciphertext.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Encrypts `plain` with a random nonce.
    pub fn seal(&self, plain: &[u8]) -> Sealed {
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), plain)
            .unwrap_or_default();
        let mut data = nonce.to_vec();
        data.extend_from_slice(&ct);
        Sealed {
            key_id: self.id.clone(),
            data,
        }
    }

    /// A subkey for another purpose (`SHA-256(purpose ‖ key)`), so one configured
    /// secret can key MACs without those ever touching the encryption key itself.
    pub fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(purpose);
        h.update(self.key);
        h.finalize().into()
    }

    /// Decrypts what [`SecretKey::seal`] produced.
    pub fn open(&self, sealed: &Sealed) -> Result<Vec<u8>, CryptoError> {
        if sealed.key_id != self.id {
            return Err(CryptoError::UnknownKey(sealed.key_id.clone()));
        }
        if sealed.data.len() < 24 + 16 {
            return Err(CryptoError::Corrupt);
        }
        let (nonce, ct) = sealed.data.split_at(24);
        XChaCha20Poly1305::new((&self.key).into())
            .decrypt(XNonce::from_slice(nonce), ct)
            .map_err(|_| CryptoError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = SecretKey::generate();
        let s = k.seal(b"token:123");
        assert_eq!(k.open(&s).expect("opens"), b"token:123");
        assert!(!s.data.windows(9).any(|w| w == b"token:123"));
        let mut bad = s.clone();
        if let Some(b) = bad.data.last_mut() {
            *b ^= 1;
        }
        assert!(matches!(k.open(&bad), Err(CryptoError::Corrupt)));
        let other = SecretKey::generate();
        assert!(matches!(other.open(&s), Err(CryptoError::UnknownKey(_))));
        let again = SecretKey::from_base64(&k.to_base64()).expect("parses");
        assert_eq!(again.id(), k.id());
    }
}
