//! The set of live connections, so a drain can reach connections whose
//! tasks are not running (an idle keep-alive connection waiting in `read`).
//!
//! The registry keeps each connection's fd *number*, not an owned fd, so
//! that tracking costs no extra descriptor. A number alone proves nothing:
//! the stream may have closed that socket (an `AsFd` impl may answer with a
//! different fd later), and the number may name someone else's socket since.
//! So the registry also keeps the socket's identity (device and inode) taken
//! at registration, and acts only on a duplicate that still has it
//! ([`sys::dup_if_same`]).

use std::os::fd::{AsFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use super::Ending;
use crate::shutdown::lock;
use crate::sys::{self, SocketId};

/// Per-connection state shared between a stream and the registry.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// The number the socket had at registration, and the socket's identity.
    fd: RawFd,
    socket: SocketId,
    pub(crate) state: AtomicU8,
    /// Live [`BusyGuard`](super::BusyGuard)s.
    pub(crate) busy_guards: AtomicU32,
    /// The connection's pending read, woken when it must look at its state
    /// again: the drain started, the last busy guard or handle was dropped,
    /// a blocked write went through.
    pub(crate) reader: atomic_waker::AtomicWaker,
    /// Live [`ConnHandle`](super::ConnHandle)s: while there are any, the
    /// drain gives the application a chance to say goodbye before our FIN.
    pub(crate) handles: AtomicU32,
    /// The application declined to have this connection handed to the next
    /// generation (its protocol keeps state a fresh process would not have).
    pub(crate) declined: std::sync::atomic::AtomicBool,
    /// How the connection ends, once that is decided (an [`Ending`] as
    /// `u8`, or [`NOT_ENDING`]); set once.
    ending: AtomicU8,
    /// Notified when `ending` is set. Allocates only once somebody listens.
    ending_set: event_listener::Event,
}

/// `ConnState::ending` before the end is decided.
const NOT_ENDING: u8 = u8::MAX;

impl ConnState {
    pub(crate) fn new(fd: RawFd, socket: SocketId, state: u8) -> Self {
        ConnState {
            fd,
            socket,
            state: AtomicU8::new(state),
            busy_guards: AtomicU32::new(0),
            reader: atomic_waker::AtomicWaker::new(),
            handles: AtomicU32::new(0),
            declined: std::sync::atomic::AtomicBool::new(false),
            ending: AtomicU8::new(NOT_ENDING),
            ending_set: event_listener::Event::new(),
        }
    }

    /// Decides how the connection ends, unless that is decided already, and
    /// tells whoever awaits it.
    pub(crate) fn end(&self, ending: Ending) {
        let set = self
            .ending
            .compare_exchange(NOT_ENDING, ending as u8, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if set {
            self.ending_set.notify(usize::MAX);
        }
    }

    /// How the connection ends, if that is decided.
    pub(crate) fn ending(&self) -> Option<Ending> {
        Ending::from_u8(self.ending.load(Ordering::SeqCst))
    }

    /// Waits until how the connection ends is decided.
    pub(crate) async fn ended(&self) -> Ending {
        loop {
            if let Some(ending) = self.ending() {
                return ending;
            }
            let listener = self.ending_set.listen();
            if let Some(ending) = self.ending() {
                return ending;
            }
            listener.await;
        }
    }

    /// Runs `act` on the connection's socket, if its number still names it.
    fn with_socket(&self, act: impl FnOnce(std::os::fd::BorrowedFd<'_>)) {
        if let Some(fd) = sys::dup_if_same(self.fd, self.socket) {
            act(fd.as_fd());
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    conns: Mutex<Conns>,
}

/// A slab: a connection's id is its slot, reused once it is removed. (A
/// pointer a slot, where a map would cost twice that per connection.)
#[derive(Debug, Default)]
struct Conns {
    slots: Vec<Option<Arc<ConnState>>>,
    free: Vec<u32>,
}

impl Registry {
    pub(crate) fn insert(&self, conn: Arc<ConnState>) -> u32 {
        let mut conns = lock(&self.conns);
        match conns.free.pop() {
            Some(id) => {
                conns.slots[id as usize] = Some(conn);
                id
            }
            None => {
                conns.slots.push(Some(conn));
                // More than 4 billion connections at once cannot be open.
                (conns.slots.len() - 1) as u32
            }
        }
    }

    /// With `discard`, first throws away what is queued on the connection's
    /// socket, so the close that follows sends no RST.
    pub(crate) fn remove(&self, id: u32, discard: bool) {
        let conn = {
            let mut conns = lock(&self.conns);
            let conn = conns.slots.get_mut(id as usize).and_then(Option::take);
            if conn.is_some() {
                conns.free.push(id);
            }
            conn
        };
        if let (Some(conn), true) = (conn, discard) {
            conn.with_socket(|fd| {
                sys::discard_queued(fd);
            });
        }
    }

    /// Wakes every connection's pending read.
    pub(crate) fn wake_all(&self) {
        for conn in lock(&self.conns).slots.iter().flatten() {
            conn.reader.wake();
        }
    }

    /// Shuts every connection down both ways: the deadline has passed.
    pub(crate) fn shutdown_all(&self) {
        let conns: Vec<_> = lock(&self.conns).slots.iter().flatten().cloned().collect();
        for conn in conns {
            conn.end(Ending::Close);
            // Failure means the peer is already gone: nothing to stop.
            conn.with_socket(|fd| {
                let _ = sys::shutdown(fd, sys::How::Both);
            });
        }
    }
}
