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
