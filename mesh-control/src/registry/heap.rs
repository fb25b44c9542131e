//! Giving a reload's freed memory back to the OS.
//!
//! Parsing a large registry file peaks far above what the parsed registry
//! keeps: the YAML events, spans and raw values are temporaries (at 100,000
//! endpoints a parse adds 70-90 MiB to the resident set). glibc's malloc
//! returns freed memory to the OS only from the top of a heap, and the new
//! index, allocated amid the parse's temporaries, pins the rest, so the peak
//! stayed resident. After each parse the control plane asks malloc to
//! release every free page (`malloc_trim`, 50-95 MiB each time): 26 ms
//! median on the registry's own thread (9 ms to, once, 0.65 s on a busy
//! 2-core machine), once per file change, at the poll after the parse: the
//! watchers' updates are out by then (a trim holds malloc's locks while it
//! walks).

use std::time::{Duration, Instant};

/// What one release did, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Released {
    /// Resident set before and after, KiB (`None`: unknown, not Linux).
    pub rss_kib: Option<(u64, u64)>,
    /// Time the release took.
    pub took: Duration,
}

/// Returns the heap's free pages to the OS (glibc only; elsewhere a no-op)
/// and logs what that changed at debug level.
pub(crate) fn release_free_memory() -> Released {
    let before = rss_kib();
    let start = Instant::now();
    trim();
    let took = start.elapsed();
    let released = Released { rss_kib: before.zip(rss_kib()), took };
    if let Some((before, after)) = released.rss_kib {
        tracing::debug!(
            rss_before_kib = before,
            rss_after_kib = after,
            took_us = took.as_micros() as u64,
            "released the registry parse's free memory"
        );
    }
    released
}

/// The resident set of this process, KiB, from `/proc/self/status`.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

/// `VmRSS` from a `/proc/PID/status` text, KiB.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes no pointer and only walks malloc's own free
    // lists under its arena locks; it is safe to call from any thread at any
    // time. Its result (whether memory was released) is not needed.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a reading of the wrong field (VmHWM, VmSize) or of the unit.
    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tmesh-control\nVmHWM:\t  200000 kB\nVmRSS:\t  123456 kB\nVmSize:\t 999 kB\n";
        assert_eq!(parse_vm_rss(status), Some(123_456));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots\n"), None);
    }

    /// Catches a trim that frees in-use memory or cannot be called twice:
    /// the process keeps working and the reading is taken on Linux.
    #[test]
    fn release_keeps_live_memory_and_reports() {
        let live: Vec<Vec<u8>> = (0..1000).map(|i| vec![(i % 251) as u8; 4096]).collect();
        let released = release_free_memory();
        release_free_memory();
        assert!(live.iter().enumerate().all(|(i, v)| v.iter().all(|&b| b == (i % 251) as u8)));
        if cfg!(target_os = "linux") {
            assert!(released.rss_kib.is_some(), "VmRSS read from /proc/self/status");
        }
    }
}
