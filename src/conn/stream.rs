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

use super::handover::Handover;
use super::registry::ConnState;
use super::{ConnHandle, Ending, Policy, Shared, BUSY, CLOSING, IDLE, NEW};
use crate::shutdown::{Guard, Shutdown};
use crate::sys;

pin_project! {
    /// A stream whose connection is tracked: it implements futures-io
    /// [`AsyncRead`] and [`AsyncWrite`] by forwarding to `S`, and keeps the
    /// connection's New / Busy / Idle state on the way (see
    /// [`Policy`](super::Policy) for how).
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
    /// linger time). A protocol that must say goodbye first (TLS
    /// `close_notify`) takes a [`ConnHandle`] before wrapping the stream; the
    /// drain then lets it. At the deadline every remaining connection is shut
    /// down both ways.
    ///
    /// # Closing
    ///
    /// `poll_close` (`AsyncWriteExt::close`) is a lingering close: it closes
    /// `S` (which flushes it and, for a socket, sends our FIN), then reads and
    /// discards what the peer still sends until the peer's FIN or the linger
    /// time (never past the deadline), so that the close never makes the
    /// kernel reset the peer. Reads return `Ok(0)` afterwards. (It used to
    /// forward to `S::poll_close` alone.) To half-close and go on reading,
    /// shut down the write side of the socket yourself instead.
    ///
    /// Made by [`TrackedListener::accept`](super::TrackedListener::accept) or
    /// [`Tracker::track`](super::Tracker::track).
    ///
    /// While alive it holds a [guard](crate::Shutdown::guard):
    /// [`stopped`](crate::Shutdown::stopped) waits until every tracked
    /// stream is dropped, or the deadline. A stream parked unpolled in the
    /// application's own list holds off the stop until then.
    pub struct Tracked<S> {
        // Declared first so it is dropped first: it discards what is queued
        // (while draining) before `stream` closes the socket.
        reg: Registration,
        #[pin]
        stream: S,
        // Bytes were written since the last read that returned data.
        wrote: bool,
        // The last write or flush returned `Pending`: a response is still on
        // its way out, whatever the reads say.
        write_blocked: bool,
        // When the automatic policy last made it Idle.
        idle_since: Option<Instant>,
        close: Closer,
        // Set on a connection of a listener that opted in to the live
        // handoff: where it goes when the drain reaches it idle.
        // Shared by the listener's connections: one pointer each.
        handover: Option<Arc<Handover>>,
        // The protocol's state for the next generation, or what the previous
        // one sent with it. Empty (no allocation) unless used.
        handover_state: Box<[u8]>,
    }
}

/// Where the connection is in its close, and the one timer a connection
/// needs at a time: its grace while open, the goodbye's or the linger's
/// bound after.
struct Closer {
    phase: Close,
    /// The timer and when it fires. Boxed: a connection needs one only
    /// while a drain or a close is under way, and inline it would cost every
    /// connection 64 bytes more for its whole life.
    timer: Option<Box<(Timer, Instant)>>,
}

impl Closer {
    fn set_timer(&mut self, at: Instant) {
        match &mut self.timer {
            Some(timer) if timer.1 == at => {}
            Some(timer) => {
                timer.0.set_at(at);
                timer.1 = at;
            }
            None => self.timer = Some(Box::new((Timer::at(at), at))),
        }
    }

    fn clear_timer(&mut self) {
        self.timer = None;
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.timer {
            Some(timer) => Pin::new(&mut timer.0).poll(cx).map(drop),
            None => Poll::Ready(()),
        }
    }

    /// Sends our FIN; reads then linger before reporting `Ok(0)`.
    fn start_linger(&mut self, shared: &Shared, conn: &ConnState, fd: BorrowedFd<'_>) {
        shared.set_state(conn, CLOSING);
        let _ = sys::shutdown(fd, sys::How::Write);
        self.phase = Close::Lingering;
        self.set_timer(linger_until(shared));
    }

    /// The drain ends the connection, and its handles get to say goodbye
    /// first, until the linger time is up.
    fn start_goodbye(&mut self, shared: &Shared, conn: &ConnState) {
        shared.set_state(conn, CLOSING);
        self.phase = Close::Goodbye;
        self.set_timer(linger_until(shared));
    }

    /// The lingering close is over.
    fn finish(&mut self) {
        self.phase = Close::Closed;
        self.clear_timer();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    Open,
    /// The drain hands this idle connection to the next generation: it is
    /// being sent (or waits for room on the channel).
    HandingOver,
    /// The next generation has it. This process never touches the socket
    /// again: no FIN, no read, no write.
    HandedOver,
    /// The drain ends this connection and told its handles: the application
    /// may say goodbye and close until the timer fires.
    Goodbye,
    /// Our FIN is sent; discard the peer's data until the timer fires.
    Lingering,
    Closed,
}

struct Registration {
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    id: u32,
    /// Unregistered already (handed over): nothing left to do on drop.
    released: bool,
    detached: bool,
    _guard: Guard,
}

impl Registration {
    /// Stops tracking now, leaving the socket untouched: no discard, and no
    /// shutdown at the deadline.
    fn release(&mut self) {
        if !std::mem::replace(&mut self.released, true) {
            self.shared.unregister(self.id, &self.conn, false);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.released {
            let discard = !self.detached && self.shared.shutdown.is_draining();
            self.shared.unregister(self.id, &self.conn, discard);
        }
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
                released: false,
                detached: false,
            },
            stream,
            wrote: false,
            write_blocked: false,
            idle_since: None,
            close: Closer {
                phase: Close::Open,
                timer: None,
            },
            handover: None,
            handover_state: Box::default(),
        }
    }

    /// Links a connection of an opted-in listener to the live handoff, with
    /// the state it arrived with (empty for a fresh one).
    pub(crate) fn set_handover(&mut self, handover: Arc<Handover>, state: Vec<u8>) {
        self.handover = Some(handover);
        self.handover_state = state.into_boxed_slice();
    }

    /// Whether the drain will move this connection to the next generation
    /// rather than close it.
    fn moves_on(&self) -> bool {
        moves_on(self.handover.as_deref(), &self.reg.conn)
    }

    /// Whether this connection will be **closed** by the drain: draining has
    /// started and the connection will not move to the next generation. The
    /// moment to say goodbye the protocol's way (HTTP/1 `Connection: close`
    /// on the response being written); a connection that moves on gets no
    /// goodbye, its client goes on talking to the next generation.
    ///
    /// False while running. One atomic load, plus one more on an opted-in
    /// listener while draining.
    pub fn will_close(&self) -> bool {
        self.is_draining() && !self.moves_on()
    }

    /// Keeps this connection from being handed to the next generation; the
    /// drain closes it instead, as it would without the opt-in. For a
    /// connection whose protocol now keeps state a fresh process would not
    /// have: after an HTTP `Upgrade` to a WebSocket, say, or a login that
    /// lives in memory. It cannot be undone.
    pub fn decline_handover(&self) {
        self.reg.conn.declined.store(true, Ordering::SeqCst);
    }

    /// Sets the state that goes with this connection to the next generation
    /// if it is handed over (a selected database, an authenticated user's
    /// id): small bytes, at most 4096. The next generation reads them with
    /// [`handover_state`](Tracked::handover_state).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for more than 4096 bytes.
    pub fn set_handover_state(&mut self, state: impl Into<Vec<u8>>) -> io::Result<()> {
        let state = state.into();
        if state.len() > MAX_HANDOVER_STATE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a connection's handover state is at most {MAX_HANDOVER_STATE} bytes, not {}",
                    state.len()
                ),
            ));
        }
        self.handover_state = state.into_boxed_slice();
        Ok(())
    }

    /// The state the previous generation sent with this connection, if it
    /// was handed over (empty otherwise), or what
    /// [`set_handover_state`](Tracked::set_handover_state) set since.
    pub fn handover_state(&self) -> &[u8] {
        &self.handover_state
    }

    /// Marks the connection Busy until the returned guard is dropped.
    ///
    /// This is how the [`Manual`](Policy::Manual) policy works: hold a guard
    /// while a request is being handled. Under the automatic policy a guard
    /// also keeps the connection Busy, for example across a long server push.
    /// When the last guard is dropped during a drain, the connection's
    /// pending read is woken and ends it, just as for an idle connection.
    pub fn busy(&self) -> BusyGuard {
        BusyGuard::new(&self.reg.shared, &self.reg.conn)
    }

    /// An owned handle to this connection, to keep after the stream is
    /// wrapped (in TLS, HTTP/2, a WebSocket): it tells when the drain ends
    /// the connection, so the protocol can say goodbye first. See
    /// [`ConnHandle`].
    pub fn handle(&self) -> ConnHandle {
        ConnHandle::new(self.reg.shared.clone(), self.reg.conn.clone())
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
    /// HTTP `Connection: close` response. It is `AsyncWriteExt::close`
    /// without closing `S` first and without an error to handle. (A
    /// connection the drain ends does this by itself before its read returns
    /// `Ok(0)`.) Reads return `Ok(0)` afterwards.
    pub async fn close_lingering(&mut self) {
        if matches!(self.close.phase, Close::Open | Close::Goodbye) {
            let fd = self.stream.as_fd();
            self.close
                .start_linger(&self.reg.shared, &self.reg.conn, fd);
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
        let shared = &*this.reg.shared;
        let conn = &*this.reg.conn;
        let close = this.close;
        loop {
            match close.phase {
                Close::Open => {}
                Close::Closed | Close::HandedOver => return Poll::Ready(Ok(0)),
                Close::HandingOver => {
                    // While it waited for room on the channel, the
                    // connection may have become busy again (a guard, or a
                    // write under way from the other half of a split
                    // stream): not idle any more, so it stays for now.
                    let guarded = conn.busy_guards.load(Ordering::SeqCst) > 0;
                    if guarded || *this.write_blocked {
                        close.phase = Close::Open;
                        // Busy until its guard is dropped and (automatic
                        // policy) its response written; a blocked write's
                        // end wakes this read, which sees it idle.
                        shared.set_state(conn, if guarded { BUSY } else { IDLE });
                        continue;
                    }
                    let handover = this.handover.as_ref().expect("handing over without a link");
                    let fd = this.stream.as_ref().get_ref().as_fd();
                    let sent = ready!(handover.successor.poll_hand_over(
                        cx,
                        &handover.listener,
                        this.handover_state,
                        fd,
                    ));
                    match sent {
                        Ok(()) => {
                            // The next generation has it: untracked, and
                            // never touched again from here.
                            close.phase = Close::HandedOver;
                            close.clear_timer();
                            conn.end(Ending::Handover);
                            this.reg.release();
                            return Poll::Ready(Ok(0));
                        }
                        Err(e) => {
                            handover.successor.fell_back(&handover.listener, &e);
                            close.phase = Close::Open;
                            end_by_closing(shared, conn, close, fd);
                            continue;
                        }
                    }
                }
                Close::Lingering => {
                    ready!(poll_linger(this.stream.as_mut(), close, cx));
                    close.finish();
                    return Poll::Ready(Ok(0));
                }
                Close::Goodbye => {
                    // The application says goodbye and closes (`poll_close`
                    // moves on from here); the read waits, unless nobody is
                    // left to say it or the time is up.
                    conn.reader.register(cx.waker());
                    if conn.handles.load(Ordering::SeqCst) > 0 {
                        ready!(close.poll_timer(cx));
                    }
                    close.start_linger(shared, conn, this.stream.as_ref().get_ref().as_fd());
                    continue;
                }
            }
            match this.stream.as_mut().poll_read(cx, buf) {
                Poll::Ready(Ok(n)) => {
                    if n > 0 {
                        on_data(shared, conn);
                        *this.wrote = false;
                        *this.idle_since = None;
                        close.clear_timer();
                    }
                    return Poll::Ready(Ok(n));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if *this.write_blocked {
                        // A response is still on its way out: whatever the
                        // state says, not idle. The write that goes through
                        // wakes this read.
                        conn.reader.register(cx.waker());
                        return Poll::Pending;
                    }
                    let moves = moves_on(this.handover.as_deref(), conn);
                    if !drain_ends_it(shared, conn, *this.wrote, moves, this.idle_since, close, cx)
                    {
                        return Poll::Pending;
                    }
                    if moves {
                        // No goodbye, no FIN: the socket, and whatever the
                        // client has sent on it, go to the next generation.
                        shared.set_state(conn, CLOSING);
                        close.phase = Close::HandingOver;
                        continue;
                    }
                    end_by_closing(shared, conn, close, this.stream.as_ref().get_ref().as_fd());
                    if close.phase == Close::Lingering {
                        // `S` returned `Pending` to this very poll, so it wakes
                        // us when the peer answers our FIN: no read until then
                        // (a drain does this for every idle connection at once).
                        ready!(close.poll_timer(cx));
                    }
                }
            }
        }
    }
}

/// A write after the connection moved to the next generation: it would
/// interleave with what the next generation sends.
fn handed_over() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the connection was handed to the next generation",
    )
}

/// The most state a connection carries to the next generation.
const MAX_HANDOVER_STATE: usize = 4096;

/// Whether the drain moves this connection to the next generation: its
/// listener opted in, it did not decline, and a successor takes it now.
fn moves_on(handover: Option<&Handover>, conn: &ConnState) -> bool {
    handover.is_some_and(|h| h.successor.takes()) && !conn.declined.load(Ordering::SeqCst)
}

/// The drain ends this connection by closing it: goodbye first if a handle
/// may say it, else our FIN and the linger.
fn end_by_closing(shared: &Shared, conn: &ConnState, close: &mut Closer, fd: BorrowedFd<'_>) {
    conn.end(Ending::Close);
    if conn.handles.load(Ordering::SeqCst) > 0 {
        // Goodbye first: the handles' `ending()` resolves now.
        close.start_goodbye(shared, conn);
    } else {
        close.start_linger(shared, conn, fd);
    }
}

/// The linger time from now, never past the deadline.
fn linger_until(shared: &Shared) -> Instant {
    let until = Instant::now() + shared.config.linger;
    match shared.shutdown.deadline() {
        Some(deadline) => deadline.min(until),
        None => until,
    }
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
/// `responded`: bytes were written since the last read that returned data.
/// A connection that `moves` to the next generation needs no grace: a
/// request on the wire goes with it.
fn drain_ends_it(
    shared: &Shared,
    conn: &ConnState,
    responded: bool,
    moves: bool,
    idle_since: &mut Option<Instant>,
    close: &mut Closer,
    cx: &mut Context<'_>,
) -> bool {
    let shutdown = &shared.shutdown;
    // Register, then look: a drain that starts in between still wakes us.
    conn.reader.register(cx.waker());
    let mut state = conn.state.load(Ordering::SeqCst);
    if state == BUSY
        && responded
        && shared.config.policy == Policy::Automatic
        && conn.busy_guards.load(Ordering::SeqCst) == 0
    {
        shared.set_state(conn, IDLE);
        *idle_since = Some(Instant::now());
        state = IDLE;
    }
    if state == BUSY || state == CLOSING || !shutdown.is_draining() {
        return false;
    }
    if moves {
        return true;
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
    close.set_timer(end);
    close.poll_timer(cx).is_ready()
}

/// Our FIN is out: read and throw away what the peer still sends until its
/// own FIN, an error, or the timer. Then nothing unread is left to make the
/// close send an RST.
fn poll_linger<S: AsyncRead + AsFd>(
    mut stream: Pin<&mut S>,
    close: &mut Closer,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let mut scratch = [0u8; 4096];
    // A budget, so a peer that streams cannot hold this task.
    for _ in 0..32 {
        match stream.as_mut().poll_read(cx, &mut scratch) {
            Poll::Ready(Ok(n)) if n > 0 => {}
            Poll::Ready(_) => return Poll::Ready(()), // the peer's FIN, or an error
            Poll::Pending => {
                ready!(close.poll_timer(cx));
                sys::discard_queued(stream.as_ref().get_ref().as_fd());
                return Poll::Ready(());
            }
        }
        if close.poll_timer(cx).is_ready() {
            sys::discard_queued(stream.as_ref().get_ref().as_fd());
            return Poll::Ready(());
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// Notes how a write or flush went: bytes written, or still blocked.
fn on_write<T>(
    shared: &Shared,
    conn: &ConnState,
    wrote: &mut bool,
    write_blocked: &mut bool,
    polled: Poll<io::Result<T>>,
    written: impl FnOnce(&T) -> bool,
) -> Poll<io::Result<T>> {
    match &polled {
        Poll::Pending => *write_blocked = true,
        Poll::Ready(result) => {
            // A read the drain holds off while the response finishes looks
            // again (outside a drain, nothing waits on it).
            if std::mem::take(write_blocked) && shared.shutdown.is_draining() {
                conn.reader.wake();
            }
            if let Ok(value) = result {
                *wrote |= written(value);
            }
        }
    }
    polled
}

impl<S: AsyncRead + AsyncWrite + AsFd> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if this.close.phase == Close::HandedOver {
            return Poll::Ready(Err(handed_over()));
        }
        let polled = this.stream.poll_write(cx, buf);
        on_write(
            &this.reg.shared,
            &this.reg.conn,
            this.wrote,
            this.write_blocked,
            polled,
            |n| *n > 0,
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if this.close.phase == Close::HandedOver {
            return Poll::Ready(Err(handed_over()));
        }
        let polled = this.stream.poll_write_vectored(cx, bufs);
        on_write(
            &this.reg.shared,
            &this.reg.conn,
            this.wrote,
            this.write_blocked,
            polled,
            |n| *n > 0,
        )
    }

    // A flush is not a response: stacks flush with nothing buffered (hyper
    // does mid-request), and only bytes written say a response went out. A
    // flush that blocks, though, means one is still on its way.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.close.phase == Close::HandedOver {
            return Poll::Ready(Ok(()));
        }
        let polled = this.stream.poll_flush(cx);
        on_write(
            &this.reg.shared,
            &this.reg.conn,
            this.wrote,
            this.write_blocked,
            polled,
            |()| false,
        )
    }

    /// The lingering close: see [`Tracked`]'s docs.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        let shared = &*this.reg.shared;
        let conn = &*this.reg.conn;
        let close = this.close;
        loop {
            match close.phase {
                // The application closes first: it stays here, and closes.
                Close::HandingOver => close.phase = Close::Open,
                // Not ours any more: closing must not send a FIN on it.
                Close::HandedOver => return Poll::Ready(Ok(())),
                Close::Open | Close::Goodbye => {
                    let closed = ready!(this.stream.as_mut().poll_close(cx));
                    close.start_linger(shared, conn, this.stream.as_ref().get_ref().as_fd());
                    match closed {
                        Err(e) if e.kind() != io::ErrorKind::NotConnected => {
                            close.finish();
                            return Poll::Ready(Err(e));
                        }
                        _ => {}
                    }
                }
                Close::Lingering => {
                    ready!(poll_linger(this.stream.as_mut(), close, cx));
                    close.finish();
                    // A read waiting on the goodbye need not wait any more.
                    conn.reader.wake();
                }
                Close::Closed => return Poll::Ready(Ok(())),
            }
        }
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

impl BusyGuard {
    pub(crate) fn new(shared: &Arc<Shared>, conn: &Arc<ConnState>) -> Self {
        if conn.busy_guards.fetch_add(1, Ordering::SeqCst) == 0 {
            // A connection already closing stays closing.
            let _ =
                shared.set_state_from(conn, NEW, BUSY) || shared.set_state_from(conn, IDLE, BUSY);
        }
        BusyGuard {
            shared: shared.clone(),
            conn: conn.clone(),
        }
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if self.conn.busy_guards.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        if self.shared.config.policy == Policy::Manual {
            self.shared.set_state_from(&self.conn, BUSY, IDLE);
        }
        // The pending read looks again: the connection may be idle now, and
        // if draining, it ends.
        self.conn.reader.wake();
    }
}
