//! Sealing at rest: business data and keys are written to disk only encrypted and
//! authenticated (XChaCha20-Poly1305) under the device's storage key.
//!
//! A sealed value is `nonce [24] | ciphertext | tag [16]`. Its associated data is the table's
//! name and the record's key, so a value copied under another key or into another table does
//! not open: an attacker with the file can delete records but not shuffle them.
//!
//! Nonces are a 128-bit random prefix drawn each time the store is opened, then a 64-bit
//! counter: unique within an opening, a repeat across openings as unlikely as a random
//! collision, and nothing to remember between runs (a stored counter would have to survive
//! crashes). It also spares a system call per sealed value.

use chacha20poly1305::aead::generic_array::GenericArray;
use chacha20poly1305::{AeadInPlace, KeyInit, XChaCha20Poly1305};
use hmac::{Hmac, KeyInit as _, Mac};
use sha2::Sha256;

const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
/// What sealing adds to a value.
pub const SEAL_OVERHEAD: usize = NONCE_BYTES + TAG_BYTES;
/// Length of the salt a passphrase is stretched with.
pub const SALT_BYTES: usize = 16;

/// The device storage key. Never written in plain except to the owner-only key file.
#[derive(Clone)]
pub struct StorageKey([u8; 32]);

impl std::fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageKey(..)")
    }
}

impl StorageKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        StorageKey(bytes)
    }

    pub fn random() -> Self {
        StorageKey(random())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Stretches a passphrase with Argon2id, so guessing it costs memory as well as time.
    pub fn from_passphrase(
        passphrase: &str,
        salt: &[u8; SALT_BYTES],
        params: KdfParams,
    ) -> Result<Self, KdfError> {
        let p = argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
            .map_err(|e| KdfError(e.to_string()))?;
        let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
        let mut out = [0u8; 32];
        kdf.hash_password_into(passphrase.as_bytes(), salt, &mut out)
            .map_err(|e| KdfError(e.to_string()))?;
        Ok(StorageKey(out))
    }
}

/// Argon2id cost parameters, recorded in the store so it can be unlocked with the ones it was
/// sealed under even if the defaults change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, in KiB.
    pub m_kib: u32,
    /// Passes over the memory.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// OWASP's minimum for Argon2id (19 MiB, 2 passes, 1 lane): a fraction of a second and
    /// 19 MiB once per start, which the smallest till affords, while costing a guesser as much.
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 19 * 1024,
        t: 2,
        p: 1,
    };

    pub fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.m_kib.to_be_bytes());
        b[4..8].copy_from_slice(&self.t.to_be_bytes());
        b[8..].copy_from_slice(&self.p.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: [u8; 12] = b.try_into().ok()?;
        let at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(KdfParams {
            m_kib: at(0),
            t: at(4),
            p: at(8),
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the passphrase could not be stretched into a key ({0})")]
pub struct KdfError(String);

/// A sealed value that does not open.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "a record in the store's '{table}' table does not open with this device's storage key: the store is damaged, or the key is not the one it was sealed with; restore the data folder from a backup"
)]
pub struct SealError {
    pub table: String,
}

/// Seals and opens values under one storage key.
pub struct Sealer {
    aead: XChaCha20Poly1305,
    /// For [`Sealer::index_tag`]: derived, so a tag says nothing about the sealing key.
    index_key: [u8; 32],
    /// Nonces are this random prefix, drawn once per opening, then a counter: unique without
    /// a system call per seal (a 128-bit prefix makes a repeat across openings negligible).
    nonce_prefix: [u8; NONCE_BYTES - 8],
    nonce_counter: std::sync::atomic::AtomicU64,
}

impl Sealer {
    pub fn new(key: &StorageKey) -> Self {
        Sealer {
            aead: XChaCha20Poly1305::new(GenericArray::from_slice(&key.0)),
            index_key: hmac(&key.0, b"tillmesh sku index tag v1"),
            nonce_prefix: random(),
            nonce_counter: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Seals `plain` as the value of `key` in `table`.
    pub fn seal(&self, table: &str, key: &[u8], plain: &[u8]) -> Vec<u8> {
        let n = self
            .nonce_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut nonce = [0u8; NONCE_BYTES];
        nonce[..NONCE_BYTES - 8].copy_from_slice(&self.nonce_prefix);
        nonce[NONCE_BYTES - 8..].copy_from_slice(&n.to_be_bytes());
        let mut out = Vec::with_capacity(plain.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .aead
            .encrypt_in_place_detached(
                GenericArray::from_slice(&nonce),
                &associated(table, key),
                &mut out[NONCE_BYTES..],
            )
            // Only a message longer than 256 GiB fails; no record comes near.
            .expect("a record too large to seal");
        out.extend_from_slice(&tag);
        out
    }

    /// Opens what [`Sealer::seal`] sealed for the same `table` and `key`.
    pub fn open(&self, table: &str, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let fail = || SealError {
            table: table.to_owned(),
        };
        if sealed.len() < SEAL_OVERHEAD {
            return Err(fail());
        }
        let (nonce, rest) = sealed.split_at(NONCE_BYTES);
        let (body, tag) = rest.split_at(rest.len() - TAG_BYTES);
        let mut plain = body.to_vec();
        self.aead
            .decrypt_in_place_detached(
                GenericArray::from_slice(nonce),
                &associated(table, key),
                &mut plain,
                GenericArray::from_slice(tag),
            )
            .map_err(|_| fail())?;
        Ok(plain)
    }

    /// A keyed tag for an index key (a SKU): equal texts give equal tags, so lookups work,
    /// but the tag reveals nothing without the storage key.
    pub fn index_tag(&self, text: &str) -> [u8; 32] {
        hmac(&self.index_key, text.as_bytes())
    }
}

fn associated(table: &str, key: &[u8]) -> Vec<u8> {
    // The separator keeps ("ab", "c") apart from ("a", "bc"): table names hold no NUL.
    let mut ad = Vec::with_capacity(table.len() + 1 + key.len());
    ad.extend_from_slice(table.as_bytes());
    ad.push(0);
    ad.extend_from_slice(key);
    ad
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// Bytes from the operating system's random source: keys, salts, nonces, ids. The one place
/// the node draws randomness.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // A machine without an entropy source cannot make keys or seal safely; nothing sensible
    // goes on.
    getrandom::fill(&mut b).expect("the operating system's random number generator failed");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new(&StorageKey::random())
    }

    #[test]
    fn round_trip_hides_the_plain_bytes() {
        let s = sealer();
        let sealed = s.seal("views", b"key-1", b"Zanzibar-Plum-Tart");
        assert!(!sealed.windows(8).any(|w| w == b"Zanzibar"));
        assert_eq!(sealed.len(), 18 + SEAL_OVERHEAD);
        assert_eq!(
            s.open("views", b"key-1", &sealed).unwrap(),
            b"Zanzibar-Plum-Tart"
        );
        // Same plain text, fresh nonce: the two seals share nothing an observer could match.
        assert_ne!(sealed, s.seal("views", b"key-1", b"Zanzibar-Plum-Tart"));
    }

    #[test]
    fn tampering_is_detected() {
        let s = sealer();
        let sealed = s.seal("entries", b"k", b"a sale of two mugs");
        for at in [0, NONCE_BYTES, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            let e = s.open("entries", b"k", &bad).unwrap_err();
            assert!(e.to_string().contains("'entries'"), "{e}");
        }
        assert!(s.open("entries", b"k", &sealed[..10]).is_err());
    }

    #[test]
    fn a_value_moved_to_another_key_or_table_fails() {
        let s = sealer();
        let sealed = s.seal("views", b"id-1", b"{}");
        assert!(s.open("views", b"id-2", &sealed).is_err());
        assert!(s.open("doc_snapshots", b"id-1", &sealed).is_err());
        // The separator: ("views", "id-1") is not ("view", "sid-1").
        assert!(s.open("view", b"sid-1", &sealed).is_err());
    }

    #[test]
    fn another_key_does_not_open() {
        let sealed = sealer().seal("meta", b"k", b"secret");
        assert!(sealer().open("meta", b"k", &sealed).is_err());
    }

    #[test]
    fn index_tags_are_stable_per_key_and_differ_across_keys() {
        let key = StorageKey::random();
        assert_eq!(
            Sealer::new(&key).index_tag("TEA-1"),
            Sealer::new(&key).index_tag("TEA-1")
        );
        assert_ne!(
            Sealer::new(&key).index_tag("TEA-1"),
            Sealer::new(&key).index_tag("TEA-2")
        );
        assert_ne!(
            Sealer::new(&key).index_tag("TEA-1"),
            sealer().index_tag("TEA-1")
        );
    }

    #[test]
    fn a_passphrase_gives_the_same_key_with_the_same_salt_only() {
        // Cheap parameters: the test is about determinism, not cost.
        let p = KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        };
        let a = StorageKey::from_passphrase("correct horse", &[1; SALT_BYTES], p).unwrap();
        let b = StorageKey::from_passphrase("correct horse", &[1; SALT_BYTES], p).unwrap();
        let c = StorageKey::from_passphrase("correct horse", &[2; SALT_BYTES], p).unwrap();
        let d = StorageKey::from_passphrase("correct horsf", &[1; SALT_BYTES], p).unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
        assert_ne!(a.as_bytes(), c.as_bytes());
        assert_ne!(a.as_bytes(), d.as_bytes());
        assert_eq!(KdfParams::from_bytes(&p.to_bytes()), Some(p));
    }
}
