//! The system calls std does not offer: the parent-death signal, signals by
//! number, and waiting for an exit without reaping. The workspace denies
//! unsafe code; each function here allows it for one call, with its reason.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

/// Makes the child receive `signal` when the thread that forks it dies.
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    let signal = signal as libc::c_ulong;
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: prctl(2) and getppid(2) are, and
    // nothing here allocates or takes locks (an OS error is a plain integer).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nothing would ever tell us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Sends `signal` to `pid`. Callers guarantee that `pid` is a child of ours
/// that has not been reaped, so it cannot name a recycled process.
#[allow(unsafe_code)]
pub(crate) fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Blocks until child `pid` has exited, leaving it unreaped (a zombie keeps
/// its PID from being reused until the caller reaps it).
#[allow(unsafe_code)]
pub(crate) fn wait_exited_unreaped(pid: u32) -> io::Result<()> {
    let id = libc::id_t::from(pid);
    loop {
        // SAFETY: siginfo_t is plain data for which all-zero bytes are a
        // valid value; waitid(2) writes into it and we read nothing back.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The open-file limits: (soft, hard).
#[allow(unsafe_code)]
pub(crate) fn open_files_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes into the struct we own and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Sets the soft open-file limit, keeping the hard one.
#[allow(unsafe_code)]
pub(crate) fn set_open_files_soft(soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: setrlimit(2) only reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
