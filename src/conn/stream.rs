//! Tracked streams: per-connection state and the drain, inside the
//! application's own reads.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use async_io::Timer;
use futures_io::{AsyncRead, AsyncWrite};
use pin_project_lite::pin_project;

use super::registry::ConnState;
use super::{Policy, Shared, BUSY, CLOSING, IDLE, NEW};
use crate::shutdown::{Guard, Shutdown};
use crate::sys;

pin_project! {
    /// A stream whose connection is tracked: it implements futures-io
    /// [`AsyncRead`] and [`AsyncWrite`] by forwarding to `S`, and keeps the
    /// connection's New / Busy / Idle state on the way.
    ///
    /// When draining starts:
    ///
    /// - an **Idle** connection's pending read returns `Ok(0)`, after the idle
    ///   grace for a next request already on the wire, so the application's
    ///   loop ends;
    /// - a **Busy** connection is left alone until it next goes idle;
    /// - a **New** connection gets the first-byte grace to send its request.
    ///
    /// A connection the drain ends is closed without resetting the peer: its
    /// read returns `Ok(0)` only after it has sent its FIN and lingered,
    /// discarding what the peer still sends, until the peer's own FIN (or the
    /// linger time). At the deadline every remaining connection is shut down
    /// both ways.
    ///
    /// Made by [`TrackedListener::accept`](super::TrackedListener::accept) or
    /// [`Tracker::track`](super::Tracker::track).
    pub struct Tracked<S> {
        // Declared first so it is dropped first: it discards what is queued
        // (while draining) before `stream` closes the socket.
        reg: Registration,
        #[pin]
        stream: S,
        // Bytes were written since the last read that returned data.
        wrote: bool,
        // When the automatic policy last made it Idle.
        idle_since: Option<Instant>,
        // Running while a drain waits out a New or Idle connection's grace.
        grace: Option<Timer>,
        close: Close,
    }
}

enum Close {
    Open,
    /// Our FIN is sent; discard the peer's data until the timer fires.
    Lingering(Timer),
    Closed,
}

struct Registration {
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    id: u64,
    detached: bool,
    _guard: Guard,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let discard = !self.detached && self.shared.shutdown.is_draining();
        self.shared.unregister(self.id, &self.conn, discard);
    }
}

impl<S: fmt::Debug> fmt::Debug for Tracked<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.reg.conn.state.load(Ordering::SeqCst) {
            NEW => "New",
            BUSY => "Busy",
            IDLE => "Idle",
            _ => "Closing",
        };
        f.debug_struct("Tracked")
            .field("stream", &self.stream)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S: AsFd> Tracked<S> {
    pub(crate) fn new(stream: S, shared: Arc<Shared>) -> Self {
        let (id, conn) = shared.register(&stream);
        Tracked {
            reg: Registration {
                _guard: shared.shutdown.guard(),
                shared,
                conn,
                id,
                detached: false,
            },
            stream,
            wrote: false,
            idle_since: None,
            grace: None,
            close: Close::Open,
        }
    }

    /// Marks the connection Busy until the returned guard is dropped.
    ///
    /// This is how the [`Manual`](Policy::Manual) policy works: hold a guard
    /// while a request is being handled. Under the automatic policy a guard
    /// also keeps the connection Busy, for example across a long server push.
    /// When the last guard is dropped during a drain, the connection's
    /// pending read is woken and ends it, just as for an idle connection.
    pub fn busy(&self) -> BusyGuard {
        let conn = &self.reg.conn;
        if conn.busy_guards.fetch_add(1, Ordering::SeqCst) == 0 {
            self.reg.shared.set_state(conn, BUSY);
        }
        BusyGuard {
            shared: self.reg.shared.clone(),
            conn: conn.clone(),
        }
    }

    /// Waits until draining starts: the moment to say goodbye the protocol's
    /// way (`Connection: close`, GOAWAY, a close frame).
    pub async fn draining(&self) {
        self.reg.shared.shutdown.draining().await
    }

    /// Whether draining has started. One atomic load.
    pub fn is_draining(&self) -> bool {
        self.reg.shared.shutdown.is_draining()
    }

    /// The coordinator this connection drains with.
    pub fn shutdown(&self) -> &Shutdown {
        &self.reg.shared.shutdown
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Stops tracking and returns the stream untouched: no half-close, no
    /// discard. This is the way out for a connection that leaves the process
    /// (for example one handed to the next generation).
    pub fn into_inner(self) -> S {
        let Tracked {
            mut reg, stream, ..
        } = self;
        reg.detached = true;
        drop(reg);
        stream
    }
}

impl<S: AsyncRead + AsFd + Unpin> Tracked<S> {
    /// Ends the connection from this side without resetting the peer: sends
    /// our FIN, then reads and discards what the peer still sends until its
    /// own FIN, or the linger time (never past the deadline).
    ///
    /// For a connection the application ends itself, for example after an
    /// HTTP `Connection: close` response. (A connection the drain ends does
    /// this by itself before its read returns `Ok(0)`.) Reads return `Ok(0)`
    /// afterwards.
    pub async fn close_lingering(&mut self) {
        if matches!(self.close, Close::Open) {
            self.close = start_linger(&self.reg.shared, &self.reg.conn, &self.stream);
        }
        // A lingering read never touches the buffer and ends with `Ok(0)`.
        let _ = futures_lite::AsyncReadExt::read(self, &mut [0u8; 1]).await;
    }
}

impl<S: AsFd> AsFd for Tracked<S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl<S: AsyncRead + AsFd> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        let shared = &this.reg.shared;
        let conn = &this.reg.conn;
        loop {
            match this.close {
                Close::Open => {}
                Close::Closed => return Poll::Ready(Ok(0)),
                Close::Lingering(timer) => {
                    ready!(poll_linger(this.stream.as_mut(), timer, cx));
                    *this.close = Close::Closed;
                    return Poll::Ready(Ok(0));
                }
            }
            match this.stream.as_mut().poll_read(cx, buf) {
                Poll::Ready(Ok(n)) => {
                    if n > 0 {
                        on_data(shared, conn);
                        *this.wrote = false;
                        *this.idle_since = None;
                        *this.grace = None;
                    }
                    return Poll::Ready(Ok(n));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    let (wrote, idle_since) = (*this.wrote, &mut *this.idle_since);
                    if !drain_ends_it(shared, conn, wrote, idle_since, this.grace, cx) {
                        return Poll::Pending;
                    }
                    *this.close = start_linger(shared, conn, this.stream.as_ref().get_ref());
                }
            }
        }
    }
}

/// Sends our FIN; the read then lingers before reporting `Ok(0)`.
fn start_linger(shared: &Shared, conn: &ConnState, stream: &impl AsFd) -> Close {
    shared.set_state(conn, CLOSING);
    let _ = sys::shutdown(stream.as_fd(), sys::How::Write);
    let now = Instant::now();
    let until = match shared.shutdown.deadline() {
        Some(deadline) => deadline.min(now + shared.config.linger),
        None => now + shared.config.linger,
    };
    Close::Lingering(Timer::at(until))
}

/// A read returned data.
fn on_data(shared: &Shared, conn: &ConnState) {
    let manual = shared.config.policy == Policy::Manual;
    let state = conn.state.load(Ordering::SeqCst);
    if !manual {
        shared.set_state(conn, BUSY);
    } else if state == NEW {
        let busy = conn.busy_guards.load(Ordering::SeqCst) > 0;
        shared.set_state(conn, if busy { BUSY } else { IDLE });
    }
}

/// A read found nothing. Updates the state and says whether the drain ends
/// this connection now; if not, the read will be woken when that may change.
fn drain_ends_it(
    shared: &Shared,
    conn: &ConnState,
    wrote: bool,
    idle_since: &mut Option<Instant>,
    grace: &mut Option<Timer>,
    cx: &mut Context<'_>,
) -> bool {
    let shutdown = &shared.shutdown;
    // Register, then look: a drain that starts in between still wakes us.
    conn.reader.register(cx.waker());
    let mut state = conn.state.load(Ordering::SeqCst);
    if state == BUSY
        && wrote
        && shared.config.policy == Policy::Automatic
        && conn.busy_guards.load(Ordering::SeqCst) == 0
    {
        shared.set_state(conn, IDLE);
        *idle_since = Some(Instant::now());
        state = IDLE;
    }
    if state == BUSY || !shutdown.is_draining() {
        return false;
    }
    // A New connection's request, or an idle one's next, may already be on
    // the wire: wait out its grace, counted from the drain's start at the
    // latest, so a steady stream of requests cannot hold the drain.
    let drain_started = shared.drain_started();
    let end = match (state, *idle_since) {
        (NEW, _) => drain_started + shared.config.first_byte_grace,
        (_, Some(since)) => since.min(drain_started) + shared.config.idle_grace,
        (_, None) => return true, // idle since a busy guard dropped: no grace
    };
    let end = shutdown
        .deadline()
        .map_or(end, |deadline| end.min(deadline));
    if Instant::now() >= end {
        return true;
    }
    let timer = grace.get_or_insert_with(|| Timer::at(end));
    Pin::new(timer).poll(cx).is_ready()
}

/// Our FIN is out: read and throw away what the peer still sends until its
/// own FIN, an error, or the timer. Then nothing unread is left to make the
/// close send an RST.
fn poll_linger<S: AsyncRead + AsFd>(
    mut stream: Pin<&mut S>,
    timer: &mut Timer,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let mut scratch = [0u8; 4096];
    // A budget, so a peer that streams cannot hold this task.
    for _ in 0..32 {
        match stream.as_mut().poll_read(cx, &mut scratch) {
            Poll::Ready(Ok(n)) if n > 0 => {}
            Poll::Ready(_) => return Poll::Ready(()), // the peer's FIN, or an error
            Poll::Pending => {
                ready!(Pin::new(timer).poll(cx));
                sys::discard_queued(stream.as_ref().get_ref().as_fd());
                return Poll::Ready(());
            }
        }
        if Pin::new(&mut *timer).poll(cx).is_ready() {
            sys::discard_queued(stream.as_ref().get_ref().as_fd());
            return Poll::Ready(());
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

impl<S: AsyncWrite> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let n = ready!(this.stream.poll_write(cx, buf))?;
        *this.wrote |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let n = ready!(this.stream.poll_write_vectored(cx, bufs))?;
        *this.wrote |= n > 0;
        Poll::Ready(Ok(n))
    }

    // A flush is not a response: stacks flush with nothing buffered (hyper
    // does mid-request), and only bytes written say a response went out.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_close(cx)
    }
}

/// Keeps a connection Busy while alive. See [`Tracked::busy`].
#[must_use = "the connection is Busy only while the guard is alive"]
pub struct BusyGuard {
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
}

impl fmt::Debug for BusyGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusyGuard").finish_non_exhaustive()
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if self.conn.busy_guards.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        if self.shared.config.policy == Policy::Manual {
            self.shared.set_state(&self.conn, IDLE);
        }
        // The pending read looks again: the connection may be idle now, and
        // if draining, it ends.
        self.conn.reader.wake();
    }
}
