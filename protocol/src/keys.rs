//! Device keys: signing and verification of log entries.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::ids::DeviceId;

/// A device's secret signing key. Never leaves the device; the store seals it at rest.
pub struct DeviceKey(SigningKey);

impl DeviceKey {
    /// From 32 secret bytes the caller drew from a CSPRNG (this crate does no I/O).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        DeviceKey(SigningKey::from_bytes(&secret))
    }

    pub fn secret(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn device_id(&self) -> DeviceId {
        DeviceId(self.0.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceKey({})", self.device_id().short())
    }
}

/// Strict verification (rejects small-order keys and non-canonical signatures), so one entry has
/// exactly one valid signature and a fork can't hide behind signature malleability.
pub fn verify(author: &DeviceId, message: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(author.as_bytes()) else {
        return false;
    };
    key.verify_strict(message, &Signature::from_bytes(signature))
        .is_ok()
}
