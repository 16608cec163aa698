//! Web chat visitors: who a browser is, without a session table.
//!
//! A visitor id is random; the token the widget keeps is the id plus an HMAC of the
//! channel and the id under the server's secret. So a token proves which visitor of which
//! channel it belongs to, cannot be forged for someone else's conversation, and needs no
//! storage until the visitor actually writes.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use voronka_core::crypto::SecretKey;
use voronka_core::ChannelId;

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &SecretKey, channel: ChannelId, visitor: &str) -> HmacSha256 {
    // The credentials key is reused through a domain-separated derivation, so a token
    // MAC can never collide with anything sealed by the key itself.
    let mut m = HmacSha256::new_from_slice(&key.derive(b"voronka webchat visitor token"))
        .expect("HMAC takes keys of any length");
    m.update(channel.0.to_string().as_bytes());
    m.update(b":");
    m.update(visitor.as_bytes());
    m
}

/// A new visitor id and its token.
pub fn new_visitor(key: &SecretKey, channel: ChannelId) -> (String, String) {
    let mut raw = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut raw);
    let visitor = format!("v{}", hex::encode(raw));
    let token = token_for(key, channel, &visitor);
    (visitor, token)
}

/// The token of a visitor.
pub fn token_for(key: &SecretKey, channel: ChannelId, visitor: &str) -> String {
    let sig = mac(key, channel, visitor).finalize().into_bytes();
    format!("{visitor}.{}", hex::encode(sig))
}

/// The visitor a token belongs to, if it is genuine for this channel.
pub fn verify_token(key: &SecretKey, channel: ChannelId, token: &str) -> Option<String> {
    let (visitor, sig) = token.split_once('.')?;
    if visitor.len() != 33 || !visitor.starts_with('v') {
        return None;
    }
    let sig = hex::decode(sig).ok()?;
    mac(key, channel, visitor).verify_slice(&sig).ok()?;
    Some(visitor.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_for_their_channel_and_key() {
        let key = SecretKey::generate();
        let (visitor, token) = new_visitor(&key, ChannelId(1));
        assert_eq!(
            verify_token(&key, ChannelId(1), &token),
            Some(visitor.clone())
        );
        assert_eq!(verify_token(&key, ChannelId(2), &token), None);
        assert_eq!(
            verify_token(&SecretKey::generate(), ChannelId(1), &token),
            None
        );
        let forged = format!("{visitor}.{}", "00".repeat(32));
        assert_eq!(verify_token(&key, ChannelId(1), &forged), None);
        assert_eq!(verify_token(&key, ChannelId(1), "garbage"), None);
    }
}
