//! What lets a receiver trust a call: an idempotency key that is the same for
//! every attempt and redelivery of one firing, and an optional HMAC-SHA256
//! signature over the signing time and the body (docs/receivers.md shows how
//! to check it).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The key of one firing: hex of the first 16 bytes of
/// SHA-256(`id` ‖ 0x00 ‖ decimal due time of the first attempt). Retries carry
/// the first attempt's due time, so they share the key; a re-schedule of the
/// id for another time gets a new one.
pub fn idempotency_key(id: &str, first_fire_at_ms: u64) -> String {
    let mut digest = Sha256::new();
    digest.update(id.as_bytes());
    digest.update([0u8]);
    digest.update(first_fire_at_ms.to_string().as_bytes());
    hex(&digest.finalize()[..16])
}

/// The signing secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(pub Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// Signs request bodies with the deployment's secret.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<secret>)")
    }
}

impl Signer {
    pub fn new(secret: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(!secret.is_empty(), "the signing secret is empty");
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .map_err(|e| anyhow::anyhow!("signing secret: {e}"))?;
        Ok(Signer { mac })
    }

    /// The `chime-signature` value for `body` signed at `t_ms`: HMAC-SHA256 of
    /// `"<t_ms>.<body>"`.
    pub fn sign(&self, t_ms: u64, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(t_ms.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("t={t_ms},v1={}", hex(&mac.finalize().into_bytes()))
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_python_hmac() {
        // python3 -c "import hmac,hashlib; print(hmac.new(b'topsecret',
        //   b'1700000000000.hello', hashlib.sha256).hexdigest())"
        let signer = Signer::new(b"topsecret").unwrap();
        assert_eq!(
            signer.sign(1_700_000_000_000, b"hello"),
            "t=1700000000000,v1=28ff7100ddf067432329f8360297563dd623cd647b40fe2b74e62a1de4cda3bd"
        );
    }

    #[test]
    fn idempotency_key_is_stable_and_per_firing() {
        // python3 -c "import hashlib; print(hashlib.sha256(
        //   b'invoice-981\x001795831387250').hexdigest()[:32])"
        assert_eq!(
            idempotency_key("invoice-981", 1_795_831_387_250),
            "0bd5f44dad578cc8e7c1bb47af0e0181"
        );
        assert_ne!(
            idempotency_key("invoice-981", 1_795_831_387_251),
            idempotency_key("invoice-981", 1_795_831_387_250)
        );
    }

    #[test]
    fn empty_secret_is_refused() {
        assert!(Signer::new(b"").is_err());
    }
}
