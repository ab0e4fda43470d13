//! Object ids: 64 random hex digits, like containerd's. Incoming ids are validated before they
//! are used anywhere (paths, store keys), and may be unique prefixes, as crictl sends them.

use std::io::Read;

pub const ID_LEN: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("id {0:?} is not 1 to 64 lower-case hex digits")]
    Malformed(String),
    #[error("reading random bytes: {0}")]
    Random(String),
}

/// A fresh random id.
pub fn generate() -> Result<String, IdError> {
    let mut b = [0u8; ID_LEN / 2];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| IdError::Random(e.to_string()))?;
    Ok(hex::encode(b))
}

/// Validate an id or id prefix from a request.
pub fn validate(s: &str) -> Result<&str, IdError> {
    if s.is_empty()
        || s.len() > ID_LEN
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(IdError::Malformed(s.chars().take(80).collect()));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let a = generate().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, generate().unwrap());
        assert!(validate(&a).is_ok());
        assert!(validate("abc").is_ok());
        for bad in ["", "ABC", "../x", &"a".repeat(65), "a b"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }
}
