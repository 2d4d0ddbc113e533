//! Ed25519 keys and the exact bytes that get signed.
//!
//! Signed things travel as the exact JSON text that was signed (a string inside the frame), so
//! there is no canonicalisation to get wrong: the signer serialises once, the verifier checks the
//! signature over the received bytes and only then parses them. Each kind of message has its own
//! domain-separation prefix, so a signature over one kind can never be replayed as another.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::digest;
use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair};

/// Domain prefix of a command envelope's signed bytes.
pub const COMMAND_DOMAIN: &[u8] = b"flotilla/command/v1\0";
/// Domain prefix of a welcome's signed bytes.
pub const WELCOME_DOMAIN: &[u8] = b"flotilla/welcome/v1\0";
/// Domain prefix of an agent's answer to the relay's challenge.
pub const AUTH_DOMAIN: &[u8] = b"flotilla/auth/v1\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningError {
    #[error("invalid key material: {0}")]
    Key(&'static str),
    #[error("signature is not valid base64")]
    SignatureEncoding,
    #[error("signature does not verify against the expected key")]
    BadSignature,
}

/// An Ed25519 key pair (PKCS#8 v2 document, as ring generates it).
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl SigningKey {
    pub fn generate() -> Self {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .expect("ed25519 key generation failed");
        Self::from_pkcs8(doc.as_ref()).expect("freshly generated key parses")
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, SigningError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| SigningError::Key("not an ed25519 pkcs8 document"))?;
        Ok(SigningKey {
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(
            self.pair
                .public_key()
                .as_ref()
                .try_into()
                .expect("32 bytes"),
        )
    }

    /// Signs `domain || message`, returning the signature in base64.
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> String {
        let mut buf = Vec::with_capacity(domain.len() + message.len());
        buf.extend_from_slice(domain);
        buf.extend_from_slice(message);
        B64.encode(self.pair.sign(&buf).as_ref())
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private key material.
        write!(f, "SigningKey({})", self.public_key().fingerprint())
    }
}

/// A 32-byte Ed25519 public key. Text form: standard base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn from_base64(s: &str) -> Result<Self, SigningError> {
        let bytes = B64
            .decode(s.trim())
            .map_err(|_| SigningError::Key("public key is not valid base64"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SigningError::Key("public key is not 32 bytes"))?;
        Ok(PublicKey(arr))
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// `SHA256:<base64 of sha256(key)>` without padding, in the style of ssh fingerprints.
    pub fn fingerprint(&self) -> String {
        let d = digest::digest(&digest::SHA256, &self.0);
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(d.as_ref())
        )
    }

    /// Verifies a base64 signature over `domain || message`.
    pub fn verify(
        &self,
        domain: &[u8],
        message: &[u8],
        signature_b64: &str,
    ) -> Result<(), SigningError> {
        let sig = B64
            .decode(signature_b64)
            .map_err(|_| SigningError::SignatureEncoding)?;
        let mut buf = Vec::with_capacity(domain.len() + message.len());
        buf.extend_from_slice(domain);
        buf.extend_from_slice(message);
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(&buf, &sig)
            .map_err(|_| SigningError::BadSignature)
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

/// The bytes an agent signs to answer the relay's challenge: binds the challenge to the agent id
/// so an answer cannot be reused by another agent or on another connection.
pub fn auth_message(challenge: &str, agent_id: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(challenge.len() + agent_id.len() + 1);
    m.extend_from_slice(challenge.as_bytes());
    m.push(0);
    m.extend_from_slice(agent_id.as_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_domain_separation() {
        let k = SigningKey::generate();
        let pk = k.public_key();
        let sig = k.sign(COMMAND_DOMAIN, b"hello");
        assert_eq!(pk.verify(COMMAND_DOMAIN, b"hello", &sig), Ok(()));
        assert_eq!(
            pk.verify(WELCOME_DOMAIN, b"hello", &sig),
            Err(SigningError::BadSignature)
        );
        assert_eq!(
            pk.verify(COMMAND_DOMAIN, b"hellp", &sig),
            Err(SigningError::BadSignature)
        );
        let other = SigningKey::generate().public_key();
        assert_eq!(
            other.verify(COMMAND_DOMAIN, b"hello", &sig),
            Err(SigningError::BadSignature)
        );
        assert_eq!(
            pk.verify(COMMAND_DOMAIN, b"hello", "not base64!"),
            Err(SigningError::SignatureEncoding)
        );
    }

    #[test]
    fn keys_round_trip() {
        let k = SigningKey::generate();
        let k2 = SigningKey::from_pkcs8(k.pkcs8()).unwrap();
        assert_eq!(k.public_key(), k2.public_key());
        let pk = PublicKey::from_base64(&k.public_key().to_base64()).unwrap();
        assert_eq!(pk, k.public_key());
        assert!(pk.fingerprint().starts_with("SHA256:"));
        assert!(PublicKey::from_base64("AAAA").is_err());
        assert!(SigningKey::from_pkcs8(b"garbage").is_err());
    }

    #[test]
    fn auth_message_binds_agent() {
        assert_ne!(auth_message("c", "ag_1"), auth_message("c", "ag_2"));
        assert_ne!(auth_message("c1", "ag_1"), auth_message("c", "1ag_1"));
    }
}
