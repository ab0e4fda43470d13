//! Object ids: 64 random hex digits, like containerd's. Incoming ids are validated before they
//! are used anywhere (paths, store keys), and may be unique prefixes, as crictl sends them.

use std::io::Read;

pub const ID_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("id {0:?} is not 1 to 64 lower-case hex digits")]
    Malformed(String),
    #[error("an id is required")]
    Missing,
    #[error("reading random bytes: {0}")]
    Random(std::io::Error),
}

/// A fresh random id.
pub fn generate() -> Result<String, IdError> {
    let mut b = [0u8; ID_LEN / 2];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(IdError::Random)?;
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
        return Err(IdError::Malformed(shown(s)));
    }
    Ok(s)
}

/// How a requested id relates to the ids kelson makes.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Nothing was given: the request is malformed.
    Empty,
    /// A full id or a prefix of one: look it up.
    Id(&'a str),
    /// Something kelson never makes (a UUID, upper case, a path): it names nothing, so it is
    /// simply not found. kubelet and critest stop and remove ids of any shape and expect
    /// success for unknown ones; such a string never reaches a path or a store key.
    Foreign,
}

pub fn lookup(s: &str) -> Lookup<'_> {
    if s.is_empty() {
        Lookup::Empty
    } else if validate(s).is_ok() {
        Lookup::Id(s)
    } else {
        Lookup::Foreign
    }
}

/// A requested id as shown in an error message: at most 80 characters.
pub fn shown(s: &str) -> String {
    s.chars().take(80).collect()
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
        assert_eq!(lookup(""), Lookup::Empty);
        assert_eq!(lookup("abc"), Lookup::Id("abc"));
        for foreign in [
            "0b5d5a0e-7c1c-4f4e-9a52-3c1b2f1e8f00",
            "ABC",
            "../x",
            &"a".repeat(65),
        ] {
            assert_eq!(lookup(foreign), Lookup::Foreign, "{foreign:?}");
        }
    }
}
