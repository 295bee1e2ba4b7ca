//! Interruption by a signal (`SIGINT`, `SIGTERM`, `SIGHUP`): apply starts no
//! new step, lets Docker calls under way finish, cancels its waits, then
//! reports what was done. Before anything changes, the operation is simply
//! dropped (closing its sessions and releasing its lock).

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::Notify;

/// Whether (and by which signal) the operation was asked to stop.
#[derive(Debug, Default)]
pub struct Interrupt {
    signal: AtomicI32,
    /// Steps are being executed: the executor winds down itself.
    executing: AtomicBool,
    notify: Notify,
}

impl Interrupt {
    pub fn new() -> Arc<Interrupt> {
        Arc::new(Interrupt::default())
    }

    /// The signal received, if any.
    pub fn fired(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    /// Records a signal; wakes whoever waits.
    pub fn fire(&self, signal: i32) {
        let _ = self
            .signal
            .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Resolves once a signal was received.
    pub async fn wait(&self) -> i32 {
        loop {
            let notified = self.notify.notified();
            if let Some(s) = self.fired() {
                return s;
            }
            notified.await;
        }
    }

    pub fn set_executing(&self, on: bool) {
        self.executing.store(on, Ordering::SeqCst);
    }

    pub fn executing(&self) -> bool {
        self.executing.load(Ordering::SeqCst)
    }
}

/// The process's interrupt, which the command line's signal handlers fire.
pub fn global() -> Arc<Interrupt> {
    static GLOBAL: OnceLock<Arc<Interrupt>> = OnceLock::new();
    GLOBAL.get_or_init(Interrupt::new).clone()
}

/// The exit code for a signal: 128 + its number (130 for `SIGINT`).
pub fn exit_code(signal: i32) -> u8 {
    (128 + signal.clamp(1, 127)) as u8
}

/// The signal's name, for messages.
pub fn name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}
