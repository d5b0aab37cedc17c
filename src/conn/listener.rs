//! Listeners that stop accepting when draining starts.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{self, UnixListener, UnixStream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_io::Async;
use event_listener::EventListener;
use futures_lite::Stream;

use super::handover::Handover;
use super::{Tracked, Tracker};
use crate::sys;

/// A listener with a poll-based accept, so a [`TrackedListener`] can race it
/// against the drain.
///
/// Implemented for:
///
/// - `Async<TcpListener>` and `Async<UnixListener>` (async-io, smol);
/// - `Arc<Async<TcpListener>>` and `Arc<Async<UnixListener>>`: what
///   async-net's listeners convert into (`Arc::<Async<_>>::from(listener)`);
/// - [`Incoming`]: any stream of accepted connections.
///
/// async-std's listeners convert into std's
/// (`std::net::TcpListener::try_from(listener)`), which `Async::new` wraps;
/// the streams accepted are then `Async<TcpStream>`, with no need for
/// async-std's `io_safety` feature. See the crate's README, "Stacks".
///
/// For another runtime's listener, implement it by trying a non-blocking
/// `accept` and registering `cx` for readability when it would block, as the
/// implementations here do. `&mut self` lets an implementation keep state
/// (a pending future, a buffer) without interior mutability.
pub trait Accept {
    /// The accepted stream.
    type Stream: AsFd;
    /// The peer address.
    type Addr;
    /// Accepts one connection, or registers `cx` to be woken when one may be
    /// ready. `Ok(None)` means no connection will ever come (a stream of
    /// connections that has ended).
    #[allow(clippy::type_complexity)]
    fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<(Self::Stream, Self::Addr)>>>;

    /// Makes a stream of a connection the previous generation handed over
    /// (an open, connected socket of this listener's kind), for the live
    /// handoff ([`Upgrader::hand_over`](crate::Upgrader::hand_over)).
    ///
    /// The default says it cannot: do not opt such a listener in to the
    /// live handoff. If it is, the connections handed to it are closed
    /// gracefully on arrival (FIN, no reset) and counted as fallen back
    /// ([`HandoverStats::fell_back`](crate::handoff::HandoverStats::fell_back)).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::Unsupported`] by default; otherwise whatever making
    /// the stream fails with (registering it with the reactor, a peer
    /// already gone).
    fn adopt(fd: OwnedFd) -> io::Result<(Self::Stream, Self::Addr)>
    where
        Self: Sized,
    {
        drop(fd);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kind of listener cannot adopt handed-over connections",
        ))
    }
}

fn adopt_tcp(fd: OwnedFd) -> io::Result<(Async<TcpStream>, SocketAddr)> {
    let stream = TcpStream::from(fd);
    let addr = stream.peer_addr()?;
    Ok((Async::new(stream)?, addr))
}

fn adopt_unix(fd: OwnedFd) -> io::Result<(Async<UnixStream>, net::SocketAddr)> {
    let stream = UnixStream::from(fd);
    let addr = stream.peer_addr()?;
    Ok((Async::new(stream)?, addr))
}

#[allow(clippy::type_complexity)]
fn poll_accept_with<L, S, A>(
    listener: &Async<L>,
    cx: &mut Context<'_>,
    accept: impl Fn(&L) -> io::Result<(S, A)>,
) -> Poll<io::Result<Option<(Async<S>, A)>>>
where
    S: AsFd,
{
    loop {
        match accept(listener.get_ref()) {
            Ok((stream, addr)) => {
                return Poll::Ready(Async::new(stream).map(|s| Some((s, addr))));
            }
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
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Accepted1<Self>>>> {
        poll_accept_with(self, cx, TcpListener::accept)
    }
    fn adopt(fd: OwnedFd) -> io::Result<Accepted1<Self>> {
        adopt_tcp(fd)
    }
}

impl Accept for Async<UnixListener> {
    type Stream = Async<UnixStream>;
    type Addr = net::SocketAddr;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Accepted1<Self>>>> {
        poll_accept_with(self, cx, UnixListener::accept)
    }
    fn adopt(fd: OwnedFd) -> io::Result<Accepted1<Self>> {
        adopt_unix(fd)
    }
}

/// async-net's `TcpListener` converts into this.
impl Accept for Arc<Async<TcpListener>> {
    type Stream = Async<TcpStream>;
    type Addr = SocketAddr;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Accepted1<Self>>>> {
        poll_accept_with(self, cx, TcpListener::accept)
    }
    fn adopt(fd: OwnedFd) -> io::Result<Accepted1<Self>> {
        adopt_tcp(fd)
    }
}

/// async-net's `UnixListener` converts into this.
impl Accept for Arc<Async<UnixListener>> {
    type Stream = Async<UnixStream>;
    type Addr = net::SocketAddr;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Accepted1<Self>>>> {
        poll_accept_with(self, cx, UnixListener::accept)
    }
    fn adopt(fd: OwnedFd) -> io::Result<Accepted1<Self>> {
        adopt_unix(fd)
    }
}

/// One accepted stream and its address, as [`Accept`] yields them.
type Accepted1<L> = (<L as Accept>::Stream, <L as Accept>::Addr);

/// Any stream of accepted connections as an [`Accept`] listener, for
/// listeners that hand out a `Stream` of connections rather than a poll
/// method: `tracker.listen(Incoming::new(stream))`.
///
/// The peer address is not known here (`()`); ask the stream. When the
/// stream ends, so does the [`TrackedListener`]'s accept loop.
///
/// The `TrackedListener` drops the stream when draining starts. If the
/// stream owns its listener (built with `futures_lite::stream::unfold`, or
/// async-std's `into_incoming`), that closes the listening fd as it should;
/// a stream that borrows its listener (`listener.incoming()`) leaves closing
/// it to you.
///
/// # Examples
///
/// ```
/// use std::net::TcpListener;
/// use seamless::conn::{Async, Incoming};
/// use seamless::{Shutdown, Tracker};
///
/// # fn main() -> std::io::Result<()> {
/// let tracker = Tracker::new(&Shutdown::new());
/// let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0))?;
/// // A stream that owns its listener: closed when draining starts.
/// let incoming = futures_lite::stream::unfold(listener, |listener| async move {
///     let accepted = listener.accept().await.map(|(stream, _)| stream);
///     Some((accepted, listener))
/// });
/// let listener = tracker.listen(Incoming::new(incoming));
/// # drop(listener); Ok(()) }
/// ```
pub struct Incoming<St> {
    // Pinned once here, so any stream will do (one allocation per listener).
    stream: Pin<Box<St>>,
}

impl<St> fmt::Debug for Incoming<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

impl<St> Incoming<St> {
    /// Wraps a stream of accepted connections.
    pub fn new(stream: St) -> Self {
        Incoming {
            stream: Box::pin(stream),
        }
    }
}

impl<St, S> Accept for Incoming<St>
where
    St: Stream<Item = io::Result<S>>,
    S: AsFd,
{
    type Stream = S;
    type Addr = ();
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<(S, ())>>> {
        Poll::Ready(match ready!(self.stream.as_mut().poll_next(cx)) {
            Some(Ok(stream)) => Ok(Some((stream, ()))),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        })
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
    /// Set when the listener opted in to the live handoff.
    handover: Option<Arc<Handover>>,
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
            handover: None,
        }
    }

    /// Opts in to the live handoff (see
    /// [`Upgrader::hand_over`](crate::Upgrader::hand_over)).
    pub(crate) fn set_handover(&mut self, handover: Handover) {
        self.handover = Some(Arc::new(handover));
    }

    /// The tracker this listener's connections belong to.
    pub(crate) fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Accepts the next connection, or returns `Ok(None)` once draining has
    /// started (and from then on), or once the listener has no more
    /// connections to give.
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
        let Some(listener) = &mut self.listener else {
            return Poll::Ready(Ok(None));
        };
        // Connections the previous generation handed over come first, as
        // soon as they arrive.
        if let Some(handover) = &self.handover {
            while let Some((fd, state)) = handover.successor.poll_received(cx, &handover.listener) {
                // Ours alone now (the previous generation dropped its copy):
                // a copy to close gracefully if it cannot be adopted.
                let copy = sys::dup_at_least(&fd, 0).ok();
                match L::adopt(fd) {
                    Ok((stream, addr)) => {
                        let mut conn = self.tracker.track(stream);
                        conn.set_handover(handover.clone(), state);
                        return Poll::Ready(Ok(Some((conn, addr))));
                    }
                    Err(e) => {
                        tracing::warn!(%e, listener = %handover.listener, "a handed-over connection could not be adopted; closed");
                        handover.successor.fell_back(&handover.listener, &e);
                        if let Some(copy) = copy {
                            let _ = sys::shutdown(copy.as_fd(), sys::How::Write);
                            sys::discard_queued(copy.as_fd());
                        }
                    }
                }
            }
        }
        match ready!(listener.poll_accept(cx))? {
            Some((stream, addr)) => {
                let mut conn = self.tracker.track(stream);
                if let Some(handover) = &self.handover {
                    conn.set_handover(handover.clone(), Vec::new());
                }
                Poll::Ready(Ok(Some((conn, addr))))
            }
            None => {
                self.close();
                Poll::Ready(Ok(None))
            }
        }
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
