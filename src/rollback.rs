//! The undo stack every multi-step create uses (CRI-O's ResourceCleaner): each step that made
//! something pushes how to unmake it; on an early return the steps run in reverse; `disarm`
//! keeps everything once the create has succeeded.

#[derive(Default)]
pub struct Rollback(Vec<Box<dyn FnOnce() + Send>>);

impl Rollback {
    pub fn push(&mut self, f: impl FnOnce() + Send + 'static) {
        self.0.push(Box::new(f));
    }

    pub fn disarm(mut self) {
        self.0.clear();
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        while let Some(f) = self.0.pop() {
            f();
        }
    }
}

/// For the unit tests of the creates: the calls their fakes were asked to make, in order, and
/// the one call that fails (by the name it is recorded under).
#[cfg(test)]
#[derive(Default)]
pub struct Journal {
    asked: std::sync::Mutex<Vec<&'static str>>,
    fail: std::sync::Mutex<Option<&'static str>>,
}

#[cfg(test)]
impl Journal {
    /// Record `call`; true when it is the one that fails.
    pub fn call(&self, call: &'static str) -> bool {
        self.asked.lock().unwrap().push(call);
        *self.fail.lock().unwrap() == Some(call)
    }

    /// The calls recorded since the last take.
    pub fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.asked.lock().unwrap())
    }

    /// Make `call` the one that fails (None: none does).
    pub fn fail_at(&self, call: Option<&'static str>) {
        *self.fail.lock().unwrap() = call;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn unwinds_in_reverse_unless_disarmed() {
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let mut r = Rollback::default();
            for i in 0..3 {
                let l = log.clone();
                r.push(move || l.lock().unwrap().push(i));
            }
        }
        assert_eq!(*log.lock().unwrap(), vec![2, 1, 0]);
        let mut r = Rollback::default();
        let l = log.clone();
        r.push(move || l.lock().unwrap().push(9));
        r.disarm();
        assert_eq!(log.lock().unwrap().len(), 3);
    }
}
