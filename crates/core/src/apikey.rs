//! API keys: random tokens shown once, stored as a SHA-256 hash, found by a public prefix.
//!
//! A key looks like `vk_<prefix>_<secret>`. The prefix locates the row; the hash of the
//! whole token is compared in constant time. SHA-256 (not argon2) is right here: the
//! token has 256 bits of entropy, so a slow hash adds latency to every request and no
//! protection.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A freshly generated key: the token to show once, and what to store.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// The full token, shown to the user once and never stored.
    pub token: String,
    /// The public prefix stored in clear to find the key.
    pub prefix: String,
    /// SHA-256 of the token, hex.
    pub hash: String,
}

/// Makes a new random key.
pub fn generate() -> GeneratedKey {
    let mut p = [0u8; 6];
    let mut s = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut p);
    rand::rngs::OsRng.fill_bytes(&mut s);
    let prefix = hex::encode(p);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let token = format!("vk_{prefix}_{secret}");
    let hash = hash(&token);
    GeneratedKey {
        token,
        prefix,
        hash,
    }
}

/// The prefix of a token, if it has the right shape.
pub fn prefix_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("vk_")?;
    let (prefix, secret) = rest.split_once('_')?;
    (prefix.len() == 12 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some(prefix)
}

/// SHA-256 of a token, hex.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares a presented token with a stored hash in constant time.
pub fn verify(token: &str, stored_hash: &str) -> bool {
    hash(token).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_verify() {
        let k = generate();
        assert_eq!(prefix_of(&k.token), Some(k.prefix.as_str()));
        assert!(verify(&k.token, &k.hash));
        assert!(!verify(&format!("{}x", k.token), &k.hash));
        assert_eq!(prefix_of("Bearer nonsense"), None);
    }
}
