//! Session ticket keys that do not outlive the credentials they were issued
//! under (defence in depth; the exact check is the re-verification of every
//! resumed session in `stream.rs`).
//!
//! A ticket carries the peer's certificate chain as verified when it was
//! issued, and rustls does not verify it again on resumption. So the keys
//! are replaced whenever the credentials change (a new trust bundle, a new
//! leaf of our own: [`Credentials::generation`]), which makes every earlier
//! ticket undecryptable, and they live at most [`MAX_TICKET_LIFETIME`] or a
//! quarter of our own leaf's lifetime, whichever is shorter: a ticket is
//! accepted at most two such periods after it was issued.

use super::Credentials;
use rustls::server::ProducesTickets;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest a ticket key is used to issue tickets.
pub const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(3600);
/// The shortest (certificates of a few seconds live in tests).
const MIN_TICKET_LIFETIME: Duration = Duration::from_secs(1);

/// Ticket keys tied to a [`Credentials`] generation.
#[derive(Debug)]
pub(super) struct Tickets {
    creds: Arc<Credentials>,
    keys: Mutex<Keys>,
}

#[derive(Debug)]
struct Keys {
    generation: u64,
    since: Instant,
    lifetime: Duration,
    current: Arc<dyn ProducesTickets>,
    /// The key before `current`, still accepted (not used to encrypt).
    previous: Option<Arc<dyn ProducesTickets>>,
}

impl Tickets {
    pub(super) fn new(creds: Arc<Credentials>) -> Result<Self, rustls::Error> {
        let keys = Keys {
            generation: creds.generation(),
            since: Instant::now(),
            lifetime: lifetime(&creds),
            current: rustls::crypto::aws_lc_rs::Ticketer::new()?,
            previous: None,
        };
        Ok(Self { creds, keys: Mutex::new(keys) })
    }

    /// The keys in force, replaced first when the credentials changed or
    /// the current key has been used for its lifetime.
    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.creds.generation();
        let changed = generation != keys.generation;
        if changed || keys.since.elapsed() >= keys.lifetime {
            match rustls::crypto::aws_lc_rs::Ticketer::new() {
                Ok(fresh) => {
                    let old = std::mem::replace(&mut keys.current, fresh);
                    // Credentials changed: nothing issued before may resume.
                    keys.previous = if changed { None } else { Some(old) };
                    keys.generation = generation;
                    keys.since = Instant::now();
                    keys.lifetime = lifetime(&self.creds);
                }
                Err(e) => {
                    // Fail closed: no ticket issued or accepted until keys can be made.
                    tracing::warn!(error = %e, "cannot make session ticket keys");
                    keys.previous = None;
                }
            }
        }
        keys
    }
}

/// How long a key issues tickets: a quarter of our leaf's lifetime, capped.
fn lifetime(creds: &Credentials) -> Duration {
    let leaf = creds
        .leaf_info()
        .and_then(|i| i.not_after.duration_since(i.not_before).ok())
        .map_or(MAX_TICKET_LIFETIME, |d| d / 4);
    leaf.clamp(MIN_TICKET_LIFETIME, MAX_TICKET_LIFETIME)
}

impl ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.keys().lifetime.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys();
        if keys.generation != self.creds.generation() {
            return None;
        }
        keys.current.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys();
        keys.current.decrypt(cipher).or_else(|| keys.previous.as_ref()?.decrypt(cipher))
    }
}
