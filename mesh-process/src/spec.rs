//! How to start a child.

use crate::DEFAULT_STOP_GRACE;
use crate::signal::{SIGKILL, c_int};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to start one child: what to run, where its output goes, how it dies.
#[derive(Debug, Clone)]
pub struct Spec {
    pub(crate) name: String,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) envs: Vec<(OsString, OsString)>,
    pub(crate) wrapper: Vec<OsString>,
    pub(crate) log: PathBuf,
    pub(crate) stderr_log: Option<PathBuf>,
    pub(crate) append: bool,
    pub(crate) process_group: bool,
    pub(crate) death_signal: c_int,
    pub(crate) stop_grace: Duration,
}

impl Spec {
    /// Runs `program` as the child called `name` (in messages), its stdout
    /// and stderr going to the file `log` (truncated first).
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>, log: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            wrapper: Vec::new(),
            log: log.into(),
            stderr_log: None,
            append: false,
            process_group: false,
            death_signal: SIGKILL,
            stop_grace: DEFAULT_STOP_GRACE,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable (the rest is inherited).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs the program through a command that execs it, e.g.
    /// `["ip", "netns", "exec", "ns1"]` (in a network namespace) or
    /// `["setpriv", "--reuid", "2102", ...]` (as another user); calls nest,
    /// the first outermost. The wrapper must exec the program (not fork it),
    /// so that the child's PID, signals and exit status are the program's.
    ///
    /// A wrapper that changes the user or group clears the parent-death
    /// signal (the kernel's rule); `setpriv --pdeathsig keep` sets it again.
    pub fn wrap<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, prefix: I) -> Self {
        let mut wrapper: Vec<OsString> = prefix.into_iter().map(|a| a.as_ref().to_owned()).collect();
        wrapper.append(&mut self.wrapper.split_off(0));
        self.wrapper = wrapper;
        self
    }

    /// Sends stderr to a file of its own (stdout stays in the log).
    pub fn stderr_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.stderr_log = Some(path.into());
        self
    }

    /// Appends to the log files instead of truncating them (a restarted child).
    pub fn append(mut self, append: bool) -> Self {
        self.append = append;
        self
    }

    /// Starts the child in a process group of its own, so that a terminal's
    /// Ctrl-C reaches only the parent, which then stops its children in order.
    pub fn own_process_group(mut self, own: bool) -> Self {
        self.process_group = own;
        self
    }

    /// The signal the kernel sends the child when the thread that started it
    /// dies (default SIGKILL).
    pub fn death_signal(mut self, signal: c_int) -> Self {
        self.death_signal = signal;
        self
    }

    /// How long the child gets to exit after SIGTERM when it is stopped or
    /// dropped, before SIGKILL (default [`DEFAULT_STOP_GRACE`]).
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The program (without the wrapper).
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Its arguments.
    pub fn get_args(&self) -> &[OsString] {
        &self.args
    }

    /// The log file (stdout, and stderr unless it has a file of its own).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Stderr's own file, if any.
    pub fn get_stderr_log(&self) -> Option<&Path> {
        self.stderr_log.as_deref()
    }

    /// The whole command line, wrapper included, for messages.
    pub fn command_line(&self) -> String {
        let words = self.wrapper.iter().map(|w| w.as_os_str()).chain([self.program.as_os_str()]);
        let words = words.chain(self.args.iter().map(|a| a.as_os_str()));
        words.map(|w| w.to_string_lossy()).collect::<Vec<_>>().join(" ")
    }
}
