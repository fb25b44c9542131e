//! One child-process supervisor, shared by `meshctl demo`, `cargo xtask
//! bench` and the test harnesses.
//!
//! - [`Spec`] says how to start a child: program, arguments, environment, an
//!   optional argv prefix ([`Spec::wrap`], e.g. `ip netns exec NS` or
//!   `setpriv --reuid ...`), and the log file its stdout and stderr go to.
//! - [`Child`] is one running child. The kernel sends it a signal when the
//!   thread that started it dies (`PR_SET_PDEATHSIG`), so even a SIGKILLed
//!   parent leaves nothing running. A thread of its own reaps it the moment
//!   it exits, so [`Child::status`] never blocks and no zombie stays. Dropping
//!   it stops it gracefully: SIGTERM, up to [`Spec::stop_grace`] to exit,
//!   then SIGKILL, and reaps it.
//! - [`Supervisor`] holds many children and reports the one that exits when
//!   it should not ([`Exited`]: its name, exit status and the end of its
//!   log), synchronously ([`Supervisor::check`]) or as a future
//!   ([`Supervisor::next_exit`]) that works on any async runtime.
//!
//! Dependencies are std and libc only (and thiserror), so that light tools
//! (xtask) can use it.

mod child;
mod limits;
mod spec;
mod supervisor;
mod sys;
mod wait;

pub use child::{Child, Exited, Stopped};
pub use limits::{OpenFiles, raise_open_files};
pub use spec::Spec;
pub use supervisor::Supervisor;
pub use wait::block_on;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Signal numbers, for [`Spec::death_signal`] and [`Child::signal`].
pub mod signal {
    pub use libc::{SIGCONT, SIGHUP, SIGINT, SIGKILL, SIGQUIT, SIGSTOP, SIGTERM, SIGUSR1, SIGUSR2, c_int};

    /// A signal by name, with or without its `SIG` prefix (`TERM`, `SIGINT`, `KILL`...).
    pub fn by_name(name: &str) -> Option<c_int> {
        let name = name.strip_prefix("SIG").unwrap_or(name);
        Some(match name {
            "CONT" => SIGCONT,
            "HUP" => SIGHUP,
            "INT" => SIGINT,
            "KILL" => SIGKILL,
            "QUIT" => SIGQUIT,
            "STOP" => SIGSTOP,
            "TERM" => SIGTERM,
            "USR1" => SIGUSR1,
            "USR2" => SIGUSR2,
            _ => return None,
        })
    }
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its log file could not be opened.
    #[error("cannot open the log file {} of {name}: {source}", .path.display())]
    Log {
        /// The child's name.
        name: String,
        /// The log file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The program could not be started.
    #[error("cannot start {name} ({}): {source}", .program.display())]
    Spawn {
        /// The child's name.
        name: String,
        /// The program (the first word of the command line, wrapper included).
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// How long [`Child`]ren get between SIGTERM and SIGKILL unless their
/// [`Spec`] says otherwise.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);

/// The last `n` lines of a text file; a note when it is empty or unreadable.
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            // The end is enough: a log may be large.
            let bytes = &bytes[bytes.len().saturating_sub(256 * 1024)..];
            let text = String::from_utf8_lossy(bytes);
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                "(the log is empty)".to_string()
            } else {
                lines[lines.len().saturating_sub(n)..].join("\n")
            }
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Makes a one-shot [`std::process::Command`] (one not supervised here, say
/// run to completion with `output()`) receive `signal` when the calling
/// thread dies, as every [`Child`] does.
pub fn die_with_parent(cmd: &mut std::process::Command, signal: signal::c_int) {
    sys::die_with_parent(cmd, signal);
}

/// Stops children together, blocking: SIGTERM to all, up to `grace` for all
/// to exit, then SIGKILL to the rest, and reaps them. Returns the names of
/// those that needed SIGKILL.
pub fn stop_all(children: &[&Child], grace: Duration) -> Vec<String> {
    let killed = block_on(child::stop_all(children, grace));
    killed.into_iter().map(|i| children[i].name().to_string()).collect()
}
