//! The old generation's end: sending connections, the application state
//! and the end marker, and reading the acknowledgements.

use std::collections::HashMap;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use async_io::Async;

use super::stream::AckTracker;
use super::wire::{self, Message, MAX_MESSAGE_LEN};
use super::{fail_socket, invalid_data, Failure};
use crate::shutdown::lock;
use crate::sys::{self, scm};

/// How often one poll retries after the reactor said "writable" and the
/// socket was full again, before yielding to the executor.
const SEND_RETRIES: usize = 4;

/// How many acknowledgements one poll reads before yielding.
const ACKS_PER_POLL: usize = 64;

/// The sending end of a channel. Cheap to clone; every clone sends on the
/// same socket, and any number of tasks may send at once.
#[derive(Clone, Debug)]
pub(crate) struct Sender {
    shared: Arc<Shared>,
}

/// Reads the receiver's acknowledgements: how many of the messages sent
/// it has taken. One per channel, polled by one task.
#[derive(Debug)]
pub(crate) struct Acks {
    shared: Arc<Shared>,
    tracker: AckTracker,
    buf: Box<[u8]>,
    done: Option<AckDone>,
}

/// What [`Acks::poll_next`] learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckEvent {
    /// The receiver has taken every message whose sequence number is below
    /// this count (more than at the last event).
    Taken(u64),
    /// The receiver's end is closed, and no message at or above `taken` was
    /// taken: those are still the sender's to close. Every later poll says
    /// the same.
    Closed {
        /// The final count of messages taken.
        taken: u64,
    },
}

#[derive(Debug)]
enum AckDone {
    Closed(u64),
    Failed(Failure),
}

struct Shared {
    io: Async<OwnedFd>,
    state: Mutex<SendState>,
    /// The number of messages sent, or about to be: an acknowledgement is
    /// checked against it without taking the lock. Raised before each
    /// `sendmsg`, so a fast receiver's acknowledgement is never ahead of it.
    sent: AtomicU64,
    /// What [`Acks`] last read, for [`Sender::taken`].
    taken: AtomicU64,
    waiters: Arc<Waiters>,
    /// Wakes every task in `waiters`: the one waker the reactor holds for
    /// this socket's write direction.
    wake_all: Waker,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("io", &self.io)
            .field("state", &self.state)
            .field("sent", &self.sent)
            .field("taken", &self.taken)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct SendState {
    /// The sequence number of the next message.
    next: u64,
    /// The end marker's sequence number, once sent.
    end: Option<u64>,
    app_state: AppStateSend,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum AppStateSend {
    #[default]
    NotSent,
    Sending,
    Sent,
}

/// What one `sendmsg` carries.
enum Outgoing<'a> {
    /// An encoded message.
    Encoded(&'a [u8]),
    /// The end marker, encoded under the lock, where the count is known.
    End,
}

/// Tasks waiting for room in the socket.
///
/// `Async::poll_writable` keeps a single waker per direction, so every
/// blocked sender registers its own waker here, and the reactor holds one
/// waker that wakes them all. Each task appears once however often it is
/// polled, so the map is bounded by the number of waiting tasks.
#[derive(Default)]
struct Waiters {
    wakers: Mutex<HashMap<(usize, usize), Waker>>,
}

impl Waiters {
    fn add(&self, waker: &Waker) {
        // Identity as `Waker::will_wake` sees it.
        let key = (waker.data() as usize, waker.vtable() as *const _ as usize);
        lock(&self.wakers)
            .entry(key)
            .or_insert_with(|| waker.clone());
    }
}

impl Wake for Waiters {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Woken outside the lock: a task may register again at once.
        let wakers = std::mem::take(&mut *lock(&self.wakers));
        for waker in wakers.into_values() {
            waker.wake();
        }
    }
}

impl Sender {
    /// Wraps the old generation's end of a channel, for sending and for
    /// reading acknowledgements.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::Unsupported`] where channels are not supported,
    /// [`io::ErrorKind::InvalidInput`] if `fd` is not a unix
    /// `SOCK_SEQPACKET` socket, or the error from registering it with the
    /// reactor.
    pub(crate) fn new(fd: OwnedFd) -> io::Result<(Sender, Acks)> {
        scm::check_seqpacket(fd.as_fd())?;
        let waiters = Arc::new(Waiters::default());
        let shared = Arc::new(Shared {
            io: Async::new(fd)?,
            state: Mutex::default(),
            sent: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            wake_all: Waker::from(waiters.clone()),
            waiters,
        });
        let acks = Acks {
            shared: shared.clone(),
            tracker: AckTracker::new(),
            buf: vec![0; MAX_MESSAGE_LEN].into_boxed_slice(),
            done: None,
        };
        Ok((Sender { shared }, acks))
    }

    /// Sends a connection accepted on the listener named `listener`, with
    /// the application's `state` for it, and returns its sequence number.
    /// The connection is the receiver's once [`Acks`] reports a count above
    /// that number.
    ///
    /// Never blocks: when the socket is full the task waits for room, and
    /// any number of tasks may wait at once. `fd` is duplicated into the
    /// message; the caller keeps its own.
    ///
    /// # Errors
    ///
    /// - [`io::ErrorKind::InvalidInput`] for a name or state the receiver
    ///   would refuse (see [`wire`]), or after the end marker was sent.
    /// - `EPIPE` ([`io::ErrorKind::BrokenPipe`]) if the receiver is gone.
    /// - Any other error from `sendmsg(2)`, e.g. `ETOOMANYREFS` when this
    ///   user has too many fds in flight.
    pub(crate) fn poll_send_connection(
        &self,
        cx: &mut Context<'_>,
        listener: &str,
        state: &[u8],
        fd: BorrowedFd<'_>,
    ) -> Poll<io::Result<u64>> {
        let mut bytes = Vec::new();
        if let Err(e) = (Message::Connection { listener, state }).encode(&mut bytes) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidInput, e)));
        }
        self.poll_send(cx, Outgoing::Encoded(&bytes), &[fd])
    }

    #[cfg(test)]
    /// [`poll_send_connection`](Self::poll_send_connection) as a future.
    pub(crate) async fn send_connection(
        &self,
        listener: &str,
        state: &[u8],
        fd: BorrowedFd<'_>,
    ) -> io::Result<u64> {
        poll_fn(|cx| self.poll_send_connection(cx, listener, state, fd)).await
    }

    /// Sends the application state blob, in as many messages as it takes,
    /// and returns the sequence number of the last. Once per channel.
    ///
    /// Connections may be sent meanwhile. If this future is dropped part
    /// way, the channel cannot [`finish`](Self::finish) any more.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for a blob over
    /// [`wire::MAX_APP_STATE_LEN`], a second blob, or after the end marker;
    /// the errors of `sendmsg(2)` as for
    /// [`poll_send_connection`](Self::poll_send_connection).
    pub(crate) async fn send_app_state(&self, blob: &[u8]) -> io::Result<u64> {
        let chunks = wire::app_state_chunks(blob)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        {
            let mut state = lock(&self.shared.state);
            if state.end.is_some() {
                return Err(finished());
            }
            if state.app_state != AppStateSend::NotSent {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the application state was already sent on this channel",
                ));
            }
            state.app_state = AppStateSend::Sending;
        }
        let mut bytes = Vec::new();
        let mut last = 0;
        for chunk in chunks {
            chunk
                .encode(&mut bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            last = poll_fn(|cx| self.poll_send(cx, Outgoing::Encoded(&bytes), &[])).await?;
        }
        lock(&self.shared.state).app_state = AppStateSend::Sent;
        Ok(last)
    }

    /// Sends the end marker and shuts the socket down for writing, so the
    /// receiver reports [`Finished`](super::Received::Finished) once it has
    /// read everything. Returns the marker's sequence number: once [`Acks`]
    /// counts past it, the receiver has taken everything. Nothing can be
    /// sent after it; calling it again returns the same number.
    ///
    /// To give up without it, drop every `Sender` clone and the [`Acks`]:
    /// the receiver then reports [`Abandoned`](super::Received::Abandoned).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] while the application state is only
    /// partly sent; the errors of `sendmsg(2)`.
    pub(crate) fn poll_finish(&self, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        self.poll_send(cx, Outgoing::End, &[])
    }

    #[cfg(test)]
    /// [`poll_finish`](Self::poll_finish) as a future.
    pub(crate) async fn finish(&self) -> io::Result<u64> {
        poll_fn(|cx| self.poll_finish(cx)).await
    }

    #[cfg(test)]
    /// How many messages were sent (and so the next sequence number).
    pub(crate) fn sent(&self) -> u64 {
        lock(&self.shared.state).next
    }

    #[cfg(test)]
    /// How many messages the receiver has taken, as [`Acks`] last read.
    pub(crate) fn taken(&self) -> u64 {
        self.shared.taken.load(Ordering::Acquire)
    }

    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        outgoing: Outgoing<'_>,
        fds: &[BorrowedFd<'_>],
    ) -> Poll<io::Result<u64>> {
        for _ in 0..SEND_RETRIES {
            match self.try_send(&outgoing, fds) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
            // Register first, then ask the reactor: a wake-up for room that
            // appears in between still reaches this task.
            self.shared.waiters.add(cx.waker());
            let mut all = Context::from_waker(&self.shared.wake_all);
            match self.shared.io.poll_writable(&mut all) {
                Poll::Pending => return Poll::Pending,
                // Room appeared since the reactor last looked: try again.
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One `sendmsg`, under the lock that keeps sequence numbers in the
    /// order messages enter the socket.
    fn try_send(&self, outgoing: &Outgoing<'_>, fds: &[BorrowedFd<'_>]) -> io::Result<u64> {
        let mut state = lock(&self.shared.state);
        let seq = state.next;
        if let Some(end) = state.end {
            return match outgoing {
                Outgoing::End => Ok(end),
                Outgoing::Encoded(_) => Err(finished()),
            };
        }
        let mut end_bytes = Vec::new();
        let bytes = match *outgoing {
            Outgoing::Encoded(bytes) => bytes,
            Outgoing::End => {
                if state.app_state == AppStateSend::Sending {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "cannot end the channel while the application state is partly sent",
                    ));
                }
                // Cannot fail: an end marker has no field to check.
                (Message::End { sent: seq })
                    .encode(&mut end_bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                &end_bytes
            }
        };
        self.shared.sent.store(seq + 1, Ordering::Release);
        if let Err(e) = scm::send_with_fds(self.shared.io.get_ref().as_fd(), bytes, fds) {
            self.shared.sent.store(seq, Ordering::Release);
            return Err(e);
        }
        state.next = seq + 1;
        if let Outgoing::End = outgoing {
            state.end = Some(seq);
            // End-of-file for the receiver once it has read everything,
            // whoever still holds a clone; acknowledgements still come back.
            let _ = sys::shutdown(self.shared.io.get_ref().as_fd(), sys::How::Write);
        }
        Ok(seq)
    }
}

impl Acks {
    /// Waits for the receiver to take more messages, or to close its end.
    ///
    /// Keep polling this while sending: the receiver acknowledges each
    /// connection before it uses it, and stops taking more while its
    /// acknowledgements are not read.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidData`] wrapping a
    /// [`StreamError`](super::stream::StreamError) if the receiver sent
    /// something other than a sensible acknowledgement; any error from
    /// `recvmsg(2)`. The channel is then shut down, so sends fail from now
    /// on, and later polls return the error again.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<AckEvent>> {
        match &self.done {
            Some(AckDone::Closed(taken)) => {
                return Poll::Ready(Ok(AckEvent::Closed { taken: *taken }))
            }
            Some(AckDone::Failed(failure)) => return Poll::Ready(Err(failure.error())),
            None => {}
        }
        for _ in 0..ACKS_PER_POLL {
            let fd = self.shared.io.get_ref().as_fd();
            let received = match scm::recv_with_fds(fd, &mut self.buf, 0) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.shared.io.poll_readable(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(self.fail(e))),
                    }
                }
                // The receiver closed with messages unread. Linux reports
                // that once, before the acknowledgements still queued.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => continue,
                Err(e) => return Poll::Ready(Err(self.fail(e))),
            };
            if received.is_eof() {
                return Poll::Ready(Ok(self.close()));
            }
            if let Some(e) = super::transport_error(&received) {
                return Poll::Ready(Err(self.fail(invalid_data(e))));
            }
            let sent = self.shared.sent.load(Ordering::Acquire);
            let bytes = &self.buf[..received.len];
            match self.tracker.receive(bytes, received.fd_count(), sent) {
                Ok(Some(taken)) => {
                    self.shared.taken.store(taken, Ordering::Release);
                    return Poll::Ready(Ok(AckEvent::Taken(taken)));
                }
                Ok(None) => continue,
                Err(e) => return Poll::Ready(Err(self.fail(invalid_data(e)))),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    #[cfg(test)]
    /// [`poll_next`](Self::poll_next) as a future.
    pub(crate) async fn next(&mut self) -> io::Result<AckEvent> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    #[cfg(test)]
    /// How many messages the receiver has taken so far.
    pub(crate) fn taken(&self) -> u64 {
        self.tracker.acked()
    }

    fn close(&mut self) -> AckEvent {
        let taken = self.tracker.acked();
        self.done = Some(AckDone::Closed(taken));
        AckEvent::Closed { taken }
    }

    fn fail(&mut self, error: io::Error) -> io::Error {
        let (failure, error) = fail_socket(self.shared.io.get_ref().as_fd(), error);
        self.done = Some(AckDone::Failed(failure));
        error
    }
}

fn finished() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "the channel's end marker was already sent",
    )
}
