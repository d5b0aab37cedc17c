//! Listeners that stop accepting when draining starts.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{self, UnixListener, UnixStream};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_io::Async;
use event_listener::EventListener;

use super::{Tracked, Tracker};

/// A listener with a poll-based accept, so a [`TrackedListener`] can race it
/// against the drain.
///
/// Implemented for `async_io::Async<TcpListener>` and
/// `Async<UnixListener>`. async-std and smol run on async-io, so their users
/// can wrap the std listener in `Async` (`Async::new(std_listener)`). For
/// another runtime's listener, implement it by trying a non-blocking
/// `accept` and registering for readability when it would block, as the
/// implementations here do.
pub trait Accept {
    /// The accepted stream.
    type Stream: AsFd;
    /// The peer address.
    type Addr;
    /// Accepts one connection, or registers `cx` to be woken when one may be
    /// ready.
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::Addr)>>;
}

fn poll_accept_with<L, S, A>(
    listener: &Async<L>,
    cx: &mut Context<'_>,
    accept: impl Fn(&L) -> io::Result<(S, A)>,
) -> Poll<io::Result<(Async<S>, A)>>
where
    S: AsFd,
{
    loop {
        match accept(listener.get_ref()) {
            Ok((stream, addr)) => return Poll::Ready(Async::new(stream).map(|s| (s, addr))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready!(listener.poll_readable(cx))?;
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

impl Accept for Async<TcpListener> {
    type Stream = Async<TcpStream>;
    type Addr = SocketAddr;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, SocketAddr)>> {
        poll_accept_with(self, cx, TcpListener::accept)
    }
}

impl Accept for Async<UnixListener> {
    type Stream = Async<UnixStream>;
    type Addr = net::SocketAddr;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::Addr)>> {
        poll_accept_with(self, cx, UnixListener::accept)
    }
}

/// An accepted connection and its peer address.
pub type Accepted<L> = (Tracked<<L as Accept>::Stream>, <L as Accept>::Addr);

/// A listener that hands out [`Tracked`] streams and stops when draining
/// starts. Made by [`Tracker::listen`].
///
/// Once draining starts, [`accept`](TrackedListener::accept) returns
/// `Ok(None)` and the listener's fd is closed: this process takes no more
/// connections. The listening socket is never `shutdown(2)`: a copy handed to
/// a new generation shares it and must keep working.
pub struct TrackedListener<L> {
    listener: Option<L>,
    tracker: Tracker,
    drain: Option<EventListener>,
}

impl<L> fmt::Debug for TrackedListener<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedListener")
            .field("open", &self.listener.is_some())
            .finish_non_exhaustive()
    }
}

impl<L: Accept> TrackedListener<L> {
    pub(crate) fn new(listener: L, tracker: Tracker) -> Self {
        TrackedListener {
            listener: Some(listener),
            tracker,
            drain: None,
        }
    }

    /// Accepts the next connection, or returns `Ok(None)` once draining has
    /// started (and from then on).
    ///
    /// # Errors
    ///
    /// Whatever the underlying accept returns, for example `EMFILE` when the
    /// process is out of file descriptors. Such errors are usually transient:
    /// an accept loop should log them and go on.
    pub async fn accept(&mut self) -> io::Result<Option<Accepted<L>>> {
        futures_lite::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Poll form of [`accept`](TrackedListener::accept).
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Accepted<L>>>> {
        let shutdown = self.tracker.shutdown().clone();
        loop {
            if shutdown.is_draining() {
                self.close();
                return Poll::Ready(Ok(None));
            }
            match &mut self.drain {
                // Listen first, then check again (the loop does), then wait.
                None => self.drain = Some(shutdown.changed()),
                Some(drain) => {
                    if Pin::new(drain).poll(cx).is_ready() {
                        self.drain = None;
                        continue;
                    }
                    break;
                }
            }
        }
        let Some(listener) = &self.listener else {
            return Poll::Ready(Ok(None));
        };
        let (stream, addr) = ready!(listener.poll_accept(cx))?;
        Poll::Ready(Ok(Some((self.tracker.track(stream), addr))))
    }

    /// The wrapped listener, while it is still open.
    pub fn get_ref(&self) -> Option<&L> {
        self.listener.as_ref()
    }

    /// Stops accepting and closes the listener's fd now.
    pub fn close(&mut self) {
        self.listener = None;
        self.drain = None;
    }
}

impl<L: AsFd> TrackedListener<L> {
    /// The listener's fd, while it is still open.
    pub fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        self.listener.as_ref().map(AsFd::as_fd)
    }
}
