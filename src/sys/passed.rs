//! Taking ownership of the fds another process passed to this one by
//! number: the socket-activation protocol (systemd's, and ours between
//! generations) puts them at 3, 4, ... before exec.
//!
//! # Safety
//!
//! A number only becomes an [`OwnedFd`] here, and only once per process:
//! [`Passed::claim`] hands out a single token for the whole process, the
//! token remembers every number it has taken, and it takes a number only if
//! it is open. The protocol guarantees that those fds were passed to this
//! process and that nothing else in it owns them (which is why the token
//! must be claimed before anything else opens fds: early in `main`).
#![allow(unsafe_code)]

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::is_open;

static CLAIMED: AtomicBool = AtomicBool::new(false);

/// The right to take this process's passed fds; there is one per process.
#[derive(Debug)]
pub(crate) struct Passed {
    taken: Vec<RawFd>,
}

impl Passed {
    /// The process's token, or `None` if it was claimed already.
    pub(crate) fn claim() -> Option<Passed> {
        (!CLAIMED.swap(true, Ordering::SeqCst)).then(|| Passed { taken: Vec::new() })
    }

    /// Takes passed fd `fd`: `None` if that number is not open (nothing
    /// was passed there) or was taken already.
    pub(crate) fn take(&mut self, fd: RawFd) -> Option<OwnedFd> {
        if fd < 0 || self.taken.contains(&fd) {
            return None;
        }
        // SAFETY: only used to ask whether the number is open; nothing is
        // read through it, and the borrow ends with this statement.
        if !is_open(unsafe { BorrowedFd::borrow_raw(fd) }) {
            return None;
        }
        self.taken.push(fd);
        // SAFETY: the number is open, was passed to this process (module
        // docs), and is taken once: `taken` and the single token see to it.
        Some(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}
