//! The one seam between the shim's logic and `kelson-shim-engine`: the command of one engine
//! verb (create, start, exec, delete), to which the caller adds its arguments and stdio. No
//! other code names the engine binary, so unit tests hand the shim a stand-in engine; this
//! file never spawns anything itself.

use std::process::Command;

use super::EngineBinary;

/// Makes the command line of one engine verb.
pub trait EngineCommand {
    /// `kelson-shim-engine <verb>`, not yet spawned.
    fn command(&self, verb: &str) -> Command;
}

impl EngineCommand for EngineBinary {
    fn command(&self, verb: &str) -> Command {
        let mut cmd = Command::new(self.path());
        cmd.arg(verb);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_engine_runs_the_verb_first() {
        let e = EngineBinary::open(Some("/usr/bin/kelson-shim-engine")).unwrap();
        let cmd = e.command("start");
        assert_eq!(cmd.get_program(), "/usr/bin/kelson-shim-engine");
        assert_eq!(cmd.get_args().collect::<Vec<_>>(), ["start"]);
    }
}
