//! API tokens: made here, shown once, kept only as a hash.
//!
//! A token reads `slp_<8 hex>_<64 hex>`. Its first part (`slp_` and 8 characters,
//! the *prefix*) is not secret: it names the token in lists, logs and the audit
//! table, and finds its row with one indexed lookup; the rest is 256 random bits
//! from the operating system. The database keeps the SHA-256 of the whole token, so
//! that a copy of the database lets nobody in; a presented token is hashed and the
//! hashes compared in constant time.

use sha2::{Digest, Sha256};

/// The visible start of every token.
pub const TOKEN_START: &str = "slp_";
const PREFIX_HEX: usize = 8;
const SECRET_HEX: usize = 64;

/// A token just made: the whole secret (to show once) and what is stored.
#[derive(Debug)]
pub struct NewToken {
    pub secret: String,
    pub prefix: String,
    pub hash: Vec<u8>,
}

impl NewToken {
    /// A new token from the kernel's random source.
    pub fn generate() -> std::io::Result<NewToken> {
        let prefix = format!("{TOKEN_START}{}", random_hex(PREFIX_HEX)?);
        let secret = format!("{prefix}_{}", random_hex(SECRET_HEX)?);
        Ok(NewToken { hash: hash(&secret), prefix, secret })
    }
}

/// `digits` hex digits from the kernel's random source.
pub(crate) fn random_hex(digits: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = vec![0u8; digits.div_ceil(2)];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let mut hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex.truncate(digits);
    Ok(hex)
}

/// The prefix of a presented token, if it is shaped like one of ours; nothing
/// else of it is looked at before the hash.
pub fn prefix_of(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(TOKEN_START)?;
    let (prefix_hex, secret_hex) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(prefix_hex, PREFIX_HEX) && hex(secret_hex, SECRET_HEX)).then(|| &presented[..TOKEN_START.len() + PREFIX_HEX])
}

pub fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Whether a presented token hashes to `stored`, in time that does not depend on
/// where they differ.
pub fn matches(presented: &str, stored: &[u8]) -> bool {
    let presented = hash(presented);
    presented.len() == stored.len() && presented.iter().zip(stored).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_found_by_its_prefix_and_checked_by_its_hash() {
        let token = NewToken::generate().unwrap();
        assert!(token.secret.starts_with(&token.prefix));
        assert_eq!(prefix_of(&token.secret), Some(token.prefix.as_str()));
        assert!(matches(&token.secret, &token.hash));
        let mut wrong = token.secret.clone();
        wrong.pop();
        wrong.push(if token.secret.ends_with('0') { '1' } else { '0' });
        assert!(!matches(&wrong, &token.hash));
        assert_ne!(NewToken::generate().unwrap().secret, token.secret);
    }

    #[test]
    fn only_token_shaped_text_has_a_prefix() {
        for bad in
            ["", "slp_", "slp_1234567_", "Bearer slp_x", "slp_zzzzzzzz_00", &format!("slp_12345678_{}", "0".repeat(63))]
        {
            assert_eq!(prefix_of(bad), None, "{bad}");
        }
    }
}
