//! The live handoff channel: idle connections, and the application's state,
//! passed from one generation to the next instead of being closed.
//!
//! A unix `SOCK_SEQPACKET` socket pair joins two generations: the old one
//! keeps one end (a [`Sender`] and its [`Acks`]), the new one inherits the
//! other as one more named fd (a [`Receiver`]). Each connection travels as
//! one message, its fd attached with `SCM_RIGHTS`. The kernel's receive
//! queue travels with the socket, so a request already on the wire is read
//! by the new generation. A generation that drains forwards what it
//! receives to its own successor through a channel of its own.
//!
//! # The wire format
//!
//! One message per `sendmsg`, at most [`wire::MAX_MESSAGE_LEN`] (8 KiB)
//! bytes. Every message starts with the format version ([`wire::VERSION`],
//! now 1) and its kind; integers are little-endian. Each message has
//! exactly one encoding, and nothing may follow its last field.
//!
//! | kind | byte | direction | fds | fields after `version: u8, kind: u8` |
//! |---|---|---|---|---|
//! | connection | 1 | old → new | 1 | `name_len: u8` (1..=255), `name` (printable ASCII, no `:`, as in `LISTEN_FDNAMES`), `state_len: u16` (0..=4096), `state` |
//! | application state | 2 | old → new | 0 | `total: u32` (≤ 64 MiB), `offset: u32`, `chunk` (the rest, ≤ 8182 bytes; `offset + len ≤ total`; empty only when `total` is 0) |
//! | end | 3 | old → new | 0 | `sent: u64`, how many messages came before it |
//! | acknowledgement | 4 | new → old | 0 | `received: u64`, how many messages the receiver has taken |
//!
//! Messages are numbered from 0 in the order they enter the socket (their
//! *sequence numbers*). The application state is sent at most once, as
//! chunks in order from offset 0 (other messages may come between them),
//! and must be complete before the end marker. Nothing follows the end
//! marker but end-of-file.
//!
//! A receiver refuses anything else: another version, an unknown kind, a
//! field out of bounds, the wrong number of fds, a message after the end
//! marker. Its error names what was wrong ([`wire::WireError`],
//! [`stream::StreamError`]), it closes the fds of that message and of every
//! message not yet taken, and shuts the channel down. A newer generation
//! meeting an older format therefore refuses the channel at the first
//! message, and the old one closes its connections as it would have
//! without a channel.
//!
//! # Who owns a connection in flight
//!
//! The receiver acknowledges each connection *before* handing it out, and
//! acknowledgements count from the first message, so:
//!
//! - a count of `n` from [`Acks`] means messages `0..n` are the receiver's:
//!   the sender drops its own copies of those fds without `shutdown(2)`;
//! - [`AckEvent::Closed`] with `taken: n` means messages from `n` on will
//!   never be taken: the sender closes those connections gracefully itself;
//! - until one of the two is known (for example at the deadline), the
//!   sender may only drop its copy, never shut the connection down: the
//!   receiver may still take it.
//!
//! The receiver's end-of-file tells it how the sender ended:
//! [`Received::Finished`] after the end marker, [`Received::Abandoned`]
//! without (the sender died or gave up), so a draining generation knows
//! when nothing more is coming.
//!
//! # Using it
//!
//! The old generation, on upgrade:
//!
//! 1. [`pair`] before spawning; pass the second fd to the child as a named
//!    fd and **close this process's copy once the child is spawned**, or
//!    the sender never learns that the child died.
//! 2. [`Sender::new`] on the first fd; keep polling [`Acks::poll_next`]
//!    from one task (the drain) for as long as anything is in flight.
//! 3. Each idle connection's own task calls
//!    [`Sender::poll_send_connection`] from inside its read poll; many may
//!    wait for room at once. The returned sequence number tells, against
//!    the acknowledgements, who owns the connection (above).
//! 4. Optionally [`Sender::send_app_state`], then [`Sender::finish`] once
//!    nothing more will be sent: the end marker, and end-of-file for the
//!    receiver whoever still holds a `Sender` clone.
//!
//! The new generation wraps the inherited fd in [`Receiver::new`] and
//! polls [`Receiver::poll_recv`] (from one task) until
//! [`Received::Finished`] or [`Received::Abandoned`], handing each
//! [`Received::Connection`] to the listener its name gives. A draining
//! generation goes on polling it, and forwards what arrives to its own
//! successor, until then.
//!
//! # Platforms
//!
//! Linux, Android, FreeBSD, NetBSD, OpenBSD and DragonFly have
//! `SOCK_SEQPACKET` unix sockets and `MSG_CMSG_CLOEXEC`. Elsewhere (macOS
//! above all) [`AVAILABLE`] is false and [`pair`], [`Sender::new`] and
//! [`Receiver::new`] fail with [`std::io::ErrorKind::Unsupported`]:
//! callers fall back to closing connections.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

mod recv;
mod send;
pub(crate) mod stream;
pub(crate) mod wire;

#[cfg(test)]
mod tests;

pub(crate) use recv::{Connection, Received, Receiver};
pub(crate) use send::{AckEvent, Acks, Sender};

use crate::sys::{self, scm};
use stream::StreamError;
use wire::{WireError, MAX_MESSAGE_LEN};

/// Whether this platform can hand connections over.
pub(crate) const AVAILABLE: bool = scm::SUPPORTED;

/// A new channel: two connected unix `SOCK_SEQPACKET` sockets, both
/// close-on-exec. The old generation wraps one in [`Sender::new`]; the
/// other is passed to the new generation, which wraps it in
/// [`Receiver::new`], and closed here once passed.
///
/// # Errors
///
/// [`io::ErrorKind::Unsupported`] where channels are not supported
/// ([`AVAILABLE`] is false); the error from `socketpair(2)` (e.g. `EMFILE`).
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    scm::seqpacket_pair()
}

/// An error that ended one end, kept to be returned again.
#[derive(Debug)]
struct Failure {
    kind: io::ErrorKind,
    message: String,
}

impl Failure {
    fn error(&self) -> io::Error {
        io::Error::new(self.kind, self.message.clone())
    }
}

/// Shuts `socket` down both ways, so the other end learns at once that
/// this one gave up, and keeps `error` to return again.
fn fail_socket(socket: BorrowedFd<'_>, error: io::Error) -> (Failure, io::Error) {
    let _ = sys::shutdown(socket, sys::How::Both);
    let failure = Failure {
        kind: error.kind(),
        message: error.to_string(),
    };
    (failure, error)
}

fn invalid_data(e: StreamError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// What the socket itself says was wrong with a received message.
fn transport_error(received: &scm::Received) -> Option<StreamError> {
    if received.truncated {
        Some(StreamError::Wire(WireError::TooLong {
            len: MAX_MESSAGE_LEN + 1,
        }))
    } else if received.fds_truncated {
        Some(StreamError::FdsLost)
    } else {
        None
    }
}
