//! A stand-in for `kelson-shim-engine` in the shim's unit tests: each verb runs a shell script
//! the test wrote (`$0` is the verb, `$@` the shim's arguments), a verb without one cannot be
//! spawned (as a missing binary), and every verb asked for is recorded. Test code only.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;

use super::{Config, EngineCommand};

/// Sets `pid_file`, `err_file`, `report` and `console` from the shim's arguments (kept in `$@`).
pub const ARGS: &str = r#"
prev=
for a in "$@"; do
  case "$prev" in
    --pid-file) pid_file=$a ;;
    --error-file) err_file=$a ;;
    --start-report) report=$a ;;
    --console-socket) console=$a ;;
  esac
  prev=$a
done
"#;

#[derive(Default)]
pub struct FakeEngine {
    scripts: Vec<(&'static str, String)>,
    asked: Rc<RefCell<Vec<String>>>,
}

impl FakeEngine {
    /// `verb` runs `script` (after `ARGS`).
    pub fn with(mut self, verb: &'static str, script: &str) -> FakeEngine {
        self.scripts.push((verb, format!("{ARGS}{script}")));
        self
    }

    /// The verbs asked for, in order, readable after the engine moved into a shim.
    pub fn asked(&self) -> Rc<RefCell<Vec<String>>> {
        self.asked.clone()
    }
}

impl EngineCommand for FakeEngine {
    fn command(&self, verb: &str) -> Command {
        self.asked.borrow_mut().push(verb.to_owned());
        match self.scripts.iter().find(|(v, _)| *v == verb) {
            Some((_, script)) => {
                let mut cmd = Command::new("/bin/sh");
                cmd.arg("-c").arg(script).arg(verb);
                cmd
            }
            None => Command::new("/nonexistent/kelson-shim-engine"),
        }
    }
}

/// A shim config in `dir` (its control socket too) running `engine`.
pub fn config(dir: &Path, engine: FakeEngine) -> Config {
    Config {
        id: "c1".into(),
        root: dir.join("engine-root"),
        bundle: dir.join("bundle"),
        dir: dir.to_owned(),
        socket: dir.join("c1.sock"),
        log: crate::cri_log::LogPath {
            dir: dir.join("logs"),
            rel: "c1.log".into(),
        },
        stdin: false,
        stdin_once: false,
        tty: false,
        engine: Box::new(engine),
    }
}

/// What a test checks is gone after a failed create.
pub fn leftovers(dir: &Path) -> Vec<PathBuf> {
    ["start-report", "c1.console"]
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}
