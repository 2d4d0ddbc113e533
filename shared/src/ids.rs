//! Random identifiers, secret tokens and their hashes.

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

/// Fills `buf` from the operating system's random source.
pub fn random_bytes(buf: &mut [u8]) {
    SystemRandom::new()
        .fill(buf)
        .expect("the operating system's random source failed");
}

/// A random identifier such as `ag_5f0c2e9a41b7d3c8e1a2`: a short prefix naming the kind of
/// thing, then 80 random bits in hex. Not secret.
pub fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 10];
    random_bytes(&mut b);
    format!("{prefix}_{}", hex::encode(b))
}

/// A secret bearer token: prefix plus 256 random bits in hex. Only its hash is ever stored.
pub fn new_secret_token(prefix: &str) -> String {
    let mut b = [0u8; 32];
    random_bytes(&mut b);
    format!("{prefix}_{}", hex::encode(b))
}

/// Hex SHA-256 of a token, the form in which tokens are stored and looked up.
pub fn token_hash(token: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, token.as_bytes()))
}

/// A random `u64`, used for backoff jitter.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    random_bytes(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_prefix_and_differ() {
        let a = new_id("ag");
        let b = new_id("ag");
        assert!(a.starts_with("ag_") && a.len() == 23, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn token_hash_is_stable_hex() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
