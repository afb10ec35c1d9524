//! The keys that seal project secrets at rest: the current one, which seals every
//! new value, and previous ones, which only open values sealed before a rotation.
//! Each sealed value names its key by an id derived from the key (never the key),
//! so a server given the new key and the old one reads both while `slipway secret
//! rotate-key` moves values over, and a value sealed under a key the server lacks
//! says so instead of failing as garbage.
//!
//! XChaCha20-Poly1305: a random 192-bit nonce per value needs no counter shared
//! between servers. The associated data binds a value to its project and name, so
//! a sealed value copied to another row does not open there.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// How many bytes a key has.
pub const KEY_BYTES: usize = 32;

/// The command a message tells people to run to make a key.
pub const MAKE_A_KEY: &str = "head -c 32 /dev/urandom | base64";

/// One key and its id.
#[derive(Clone)]
pub struct SecretKey {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl SecretKey {
    pub fn new(bytes: &[u8; KEY_BYTES]) -> Self {
        let digest = Sha256::new().chain_update(b"slipway secrets key id\0").chain_update(bytes).finalize();
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        SecretKey { id, cipher: XChaCha20Poly1305::new(bytes.into()) }
    }

    /// A key written as base64 (surrounding whitespace ignored), as
    /// `SLIPWAY_SECRETS_KEY` and the key file hold it.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| format!("a secrets key is {KEY_BYTES} bytes in base64; make one with `{MAKE_A_KEY}`"))?;
        let bytes: [u8; KEY_BYTES] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "a secrets key is {KEY_BYTES} bytes in base64, this one is {} bytes; make one with `{MAKE_A_KEY}`",
                b.len()
            )
        })?;
        Ok(SecretKey::new(&bytes))
    }

    /// A new random key, as base64.
    pub fn generate_base64() -> String {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        base64::engine::general_purpose::STANDARD.encode(key)
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A value as stored: which key sealed it, its nonce, and the ciphertext with its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// Why a stored value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("sealed under key {0}, which this server does not have (give it as SLIPWAY_SECRETS_PREVIOUS_KEY)")]
    UnknownKey(String),
    #[error("the stored value does not open under its key: it was altered or moved")]
    Corrupt,
}

/// The current key and those that came before it.
#[derive(Debug, Clone)]
pub struct Keyring {
    current: SecretKey,
    previous: Vec<SecretKey>,
}

impl Keyring {
    pub fn new(current: SecretKey, previous: Vec<SecretKey>) -> Self {
        let previous = previous.into_iter().filter(|k| k.id != current.id).collect();
        Keyring { current, previous }
    }

    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `value` under the current key, bound to `binding` (the project and
    /// name it is stored under).
    pub fn seal(&self, binding: &[u8], value: &[u8]) -> Sealed {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .current
            .cipher
            .encrypt(&nonce, Payload { msg: value, aad: binding })
            .expect("XChaCha20-Poly1305 seals any length this process can hold");
        Sealed { key_id: self.current.id.clone(), nonce: nonce.to_vec(), ciphertext }
    }

    /// Opens a value sealed under any key this ring holds.
    pub fn open(&self, binding: &[u8], sealed: &Sealed) -> Result<Vec<u8>, OpenError> {
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| OpenError::UnknownKey(sealed.key_id.clone()))?;
        let nonce: [u8; 24] = sealed.nonce.as_slice().try_into().map_err(|_| OpenError::Corrupt)?;
        key.cipher
            .decrypt(&XNonce::from(nonce), Payload { msg: &sealed.ciphertext, aad: binding })
            .map_err(|_| OpenError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretKey {
        SecretKey::new(&[byte; KEY_BYTES])
    }

    #[test]
    fn a_value_opens_under_its_key_and_binding_only() {
        let ring = Keyring::new(key(1), vec![]);
        let sealed = ring.seal(b"p/name", b"hunter2");
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(ring.open(b"p/name", &sealed).unwrap(), b"hunter2");
        assert_eq!(ring.open(b"q/name", &sealed), Err(OpenError::Corrupt));
        let mut altered = sealed.clone();
        altered.ciphertext[0] ^= 1;
        assert_eq!(ring.open(b"p/name", &altered), Err(OpenError::Corrupt));
        // Two seals of one value differ (fresh nonces).
        assert_ne!(ring.seal(b"p/name", b"hunter2").ciphertext, sealed.ciphertext);
    }

    #[test]
    fn after_a_rotation_old_values_open_with_the_previous_key_and_new_ones_use_the_new() {
        let old = Keyring::new(key(1), vec![]);
        let sealed = old.seal(b"b", b"v");
        let rotated = Keyring::new(key(2), vec![key(1)]);
        assert_eq!(rotated.open(b"b", &sealed).unwrap(), b"v");
        assert_eq!(rotated.seal(b"b", b"v").key_id, key(2).id());
        let forgotten = Keyring::new(key(2), vec![]);
        assert_eq!(forgotten.open(b"b", &sealed), Err(OpenError::UnknownKey(key(1).id().to_string())));
    }

    #[test]
    fn keys_are_read_from_base64_of_exactly_32_bytes() {
        let text = SecretKey::generate_base64();
        assert_eq!(SecretKey::from_base64(&format!(" {text}\n")).unwrap().id().len(), 16);
        assert!(SecretKey::from_base64("c2hvcnQ=").unwrap_err().contains("this one is 5 bytes"));
        assert!(SecretKey::from_base64("not base64!").unwrap_err().contains(MAKE_A_KEY));
        // The id names the key without giving it away, and differs between keys.
        assert_ne!(key(1).id(), key(2).id());
        assert!(!format!("{:?}", key(1)).contains("cipher"));
    }
}
