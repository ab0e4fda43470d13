//! Single-use, unguessable, expiring tokens: the only thing that authorises a streaming URL
//! (kubelet hands the URL to the API server, which connects to it). A token is 32 random bytes
//! (hex); it is removed when it is used, and refused after its time to live.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Pending tokens at most: a flood of Exec calls that never connect cannot grow memory
/// without bound (expired ones are dropped first).
pub const MAX_PENDING: usize = 4096;

pub struct Tokens<T> {
    ttl: Duration,
    pending: HashMap<String, (Instant, T)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Too many URLs handed out and not used yet.
    Full,
    /// The system's random source failed.
    Random(getrandom::Error),
}

impl<T> Tokens<T> {
    pub fn new(ttl: Duration) -> Tokens<T> {
        Tokens {
            ttl,
            pending: HashMap::new(),
        }
    }

    /// Store `what` under a fresh token, valid for the time to live from `now`.
    pub fn issue(&mut self, what: T, now: Instant) -> Result<String, TokenError> {
        self.pending.retain(|_, (expires, _)| *expires > now);
        if self.pending.len() >= MAX_PENDING {
            return Err(TokenError::Full);
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(TokenError::Random)?;
        let token = hex::encode(raw);
        self.pending.insert(token.clone(), (now + self.ttl, what));
        Ok(token)
    }

    /// The request stored under `token`, once: used, expired and unknown tokens give None.
    pub fn take(&mut self, token: &str, now: Instant) -> Option<T> {
        let (expires, what) = self.pending.remove(token)?;
        (expires > now).then_some(what)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_unguessable_and_expire() {
        let t0 = Instant::now();
        let mut t = Tokens::new(Duration::from_secs(60));
        let a = t.issue("a", t0).unwrap();
        let b = t.issue("b", t0).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(t.take(&a, t0), Some("a"));
        assert_eq!(t.take(&a, t0), None, "reused");
        assert_eq!(t.take("0000", t0), None, "forged");
        assert_eq!(t.take(&b, t0 + Duration::from_secs(61)), None, "expired");
        assert!(t.is_empty());
    }

    #[test]
    fn pending_tokens_are_capped_and_expired_ones_make_room() {
        let t0 = Instant::now();
        let mut t = Tokens::new(Duration::from_secs(1));
        for _ in 0..MAX_PENDING {
            t.issue((), t0).unwrap();
        }
        assert_eq!(t.issue((), t0), Err(TokenError::Full));
        assert!(t.issue((), t0 + Duration::from_secs(2)).is_ok());
        assert_eq!(t.len(), 1);
    }
}
