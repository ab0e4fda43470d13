//! Connections of the streaming server still sending their request head (or TLS handshake):
//! a bounded pool of its own, apart from the session slots, in which a new connection evicts
//! the oldest pending one when full. Any local process can open connections and never finish
//! their heads; held in the session slots (or in a small pool that blocks accepting) they
//! would keep kubelet's valid URLs out for the whole head timeout. Here they cost a socket
//! each until `MAX_PENDING_HEADS` are pending, then the oldest of them goes first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Connections at once still sending their request head; past it the oldest is dropped.
pub const MAX_PENDING_HEADS: usize = 1024;

#[derive(Default)]
struct Queue {
    next: u64,
    /// Oldest first: each pending connection's number and its eviction signal.
    pending: VecDeque<(u64, Arc<Notify>)>,
}

/// The pool of pending heads, shared by the accept loop and its connections.
pub struct PendingHeads {
    cap: usize,
    queue: Mutex<Queue>,
}

/// One connection's place in the pool, from its accept until its head has arrived (`arrived`)
/// or it ends (drop).
pub struct Pending {
    id: u64,
    evicted: Arc<Notify>,
    pool: Arc<PendingHeads>,
}

impl PendingHeads {
    pub fn new(cap: usize) -> Arc<PendingHeads> {
        Arc::new(PendingHeads {
            cap: cap.max(1),
            queue: Mutex::default(),
        })
    }

    /// A place for a new connection; when the pool is full the oldest pending connection is
    /// told to go.
    pub fn admit(self: &Arc<Self>) -> Pending {
        let evicted = Arc::new(Notify::new());
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        while q.pending.len() >= self.cap {
            if let Some((_, oldest)) = q.pending.pop_front() {
                // A permit is stored: the connection sees it even if not waiting yet.
                oldest.notify_one();
            }
        }
        let id = q.next;
        q.next += 1;
        q.pending.push_back((id, evicted.clone()));
        Pending {
            id,
            evicted,
            pool: self.clone(),
        }
    }

    /// Connections pending now.
    pub fn len(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove(&self, id: u64) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = q.pending.iter().position(|(n, _)| *n == id) {
            q.pending.remove(i);
        }
    }
}

impl Pending {
    /// The head has arrived: the connection leaves the pool and can no longer be evicted.
    pub fn arrived(&self) {
        self.pool.remove(self.id);
    }

    /// Resolves when a newer connection took this one's place.
    pub async fn evicted(&self) {
        self.evicted.notified().await
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.pool.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn is_evicted(p: &Pending) -> bool {
        tokio::time::timeout(Duration::from_millis(20), p.evicted())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_full_pool_evicts_the_oldest_pending_head_only() {
        let pool = PendingHeads::new(3);
        let a = pool.admit();
        let b = pool.admit();
        let c = pool.admit();
        assert_eq!(pool.len(), 3);
        let d = pool.admit();
        assert_eq!(pool.len(), 3);
        assert!(is_evicted(&a).await, "the oldest goes");
        assert!(!is_evicted(&b).await && !is_evicted(&c).await && !is_evicted(&d).await);
        // A connection whose head arrived is out of reach of evictions.
        b.arrived();
        assert_eq!(pool.len(), 2);
        let _e = pool.admit();
        let _f = pool.admit();
        assert!(!is_evicted(&b).await, "b's head arrived");
        assert!(is_evicted(&c).await, "c was then the oldest pending");
        drop(d);
        assert_eq!(pool.len(), 2);
    }
}
