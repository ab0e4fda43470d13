//! The exit record: written atomically (temp file, fsync, rename) when the container's init
//! exits, so kelsond learns the exit even if it was down at the time, or the shim died after.

use std::io::Write;
use std::path::Path;

pub const EXIT_FILE: &str = "exit.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Exit {
    pub code: i32,
    pub finished_at: i64,
    pub started_at: i64,
    pub oom_killed: bool,
}

impl Exit {
    pub fn to_json(self) -> String {
        format!(
            "{{\"exit_code\":{},\"started_at\":{},\"finished_at\":{},\"oom_killed\":{}}}\n",
            self.code, self.started_at, self.finished_at, self.oom_killed
        )
    }

    pub fn write(self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(".exit.json.tmp");
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(crate::PRIVATE_FILE)
                .open(&tmp)?
        };
        f.write_all(self.to_json().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(EXIT_FILE))?;
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_json() {
        let d = tempfile::tempdir().unwrap();
        let e = Exit {
            code: 137,
            finished_at: 5,
            started_at: 2,
            oom_killed: true,
        };
        e.write(d.path()).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join(EXIT_FILE)).unwrap()).unwrap();
        assert_eq!(v["exit_code"], 137);
        assert_eq!(v["oom_killed"], true);
        assert!(!d.path().join(".exit.json.tmp").exists());
    }
}
