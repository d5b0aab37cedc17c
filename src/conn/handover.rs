//! The tracker's side of the live handoff: what it needs from the layer
//! that moves idle connections to the next generation (the upgrader's
//! relay), and the link an opted-in listener gives each of its connections.
//!
//! The tracker decides *when* a connection moves (the drain reaches it
//! idle or new, on an opted-in listener, and it has not declined); the
//! successor decides *whether* it can (a channel to a next generation that
//! is ready) and carries it.

use std::fmt;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Where connections go when they leave this generation alive, and where
/// the previous generation's arrive.
pub(crate) trait Successor: Send + Sync {
    /// Whether connections move to a next generation now: this process
    /// drains for an upgrade, and the channel to its successor is open.
    fn takes(&self) -> bool;

    /// Sends connection `fd` of `listener`, with its `state`. Pending while
    /// the channel is full. The successor keeps its own duplicate until the
    /// next generation has taken it; the caller must never FIN, shut down or
    /// read the socket afterwards. An error means it could not go: close it.
    fn poll_hand_over(
        &self,
        cx: &mut Context<'_>,
        listener: &str,
        state: &[u8],
        fd: BorrowedFd<'_>,
    ) -> Poll<io::Result<()>>;

    /// A connection of `listener` that could not be handed over is closed
    /// instead: counted, and logged.
    fn fell_back(&self, listener: &str, error: &io::Error);

    /// The next connection the previous generation handed over for
    /// `listener`, with its state; otherwise registers `cx` to be woken when
    /// one arrives.
    fn poll_received(&self, cx: &mut Context<'_>, listener: &str) -> Option<(OwnedFd, Vec<u8>)>;
}

/// An opted-in listener's link to the successor, shared by its connections.
#[derive(Clone)]
pub(crate) struct Handover {
    pub(crate) successor: Arc<dyn Successor>,
    /// The name the listener is passed on under.
    pub(crate) listener: Arc<str>,
}

impl fmt::Debug for Handover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handover")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}
