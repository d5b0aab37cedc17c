//! The set of live connections, so a drain can reach connections whose
//! tasks are not running (an idle keep-alive connection waiting in `read`).
//!
//! # Safety
//!
//! The registry keeps raw fd numbers, not owned fds, so that tracking a
//! connection costs no extra descriptor. That is sound because of one
//! invariant, kept by [`Registration`](super::stream): an fd is in the
//! registry only while the stream that owns it is alive, and the owner
//! removes it (under the registry lock) *before* the stream is dropped and
//! the fd closed. Every use of a raw fd below happens under that same lock,
//! so the fd can neither be closed nor reused by another socket meanwhile.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU8, AtomicUsize};
use std::sync::{Arc, Mutex};

use crate::shutdown::lock;
use crate::sys;

/// Per-connection state shared between a stream and the registry.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// Invariant: open for as long as this entry is in the registry.
    fd: RawFd,
    pub(crate) state: AtomicU8,
    /// Live [`BusyGuard`](super::BusyGuard)s.
    pub(crate) busy_guards: AtomicUsize,
    /// The connection's pending read, woken when it must look at its state
    /// again: the drain started, or the last busy guard was dropped.
    pub(crate) reader: atomic_waker::AtomicWaker,
}

impl ConnState {
    pub(crate) fn new(fd: RawFd, state: u8) -> Self {
        ConnState {
            fd,
            state: AtomicU8::new(state),
            busy_guards: AtomicUsize::new(0),
            reader: atomic_waker::AtomicWaker::new(),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    conns: Mutex<Conns>,
}

#[derive(Debug, Default)]
struct Conns {
    next_id: u64,
    map: HashMap<u64, Arc<ConnState>>,
}

impl Registry {
    pub(crate) fn insert(&self, conn: Arc<ConnState>) -> u64 {
        let mut conns = lock(&self.conns);
        let id = conns.next_id;
        conns.next_id += 1;
        conns.map.insert(id, conn);
        id
    }

    /// Must be called before the connection's fd is closed. With `discard`,
    /// first throws away what is queued, so the close sends no RST.
    pub(crate) fn remove(&self, id: u64, discard: bool) {
        let mut conns = lock(&self.conns);
        if let Some(conn) = conns.map.remove(&id) {
            if discard {
                // SAFETY: the entry was registered until just now and the
                // lock is held, so its fd is still open and its own.
                let fd = unsafe { BorrowedFd::borrow_raw(conn.fd) };
                sys::discard_queued(fd);
            }
        }
    }

    /// Wakes every connection's pending read.
    pub(crate) fn wake_all(&self) {
        for conn in lock(&self.conns).map.values() {
            conn.reader.wake();
        }
    }

    /// Shuts every connection down both ways: the deadline has passed.
    pub(crate) fn shutdown_all(&self) {
        for conn in lock(&self.conns).map.values() {
            // SAFETY: the registry lock is held and `conn` is registered, so
            // by the module invariant its fd is open and still its own.
            let fd = unsafe { BorrowedFd::borrow_raw(conn.fd) };
            // Failure means the peer is already gone: nothing to stop.
            let _ = sys::shutdown(fd, sys::How::Both);
        }
    }
}
