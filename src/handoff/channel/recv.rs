//! The new generation's end: receiving connections and the application
//! state, and acknowledging them.

#[cfg(test)]
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::task::{Context, Poll};

use async_io::Async;

use super::stream::{Delivery, Ending, Inbound};
use super::wire::{Message, MAX_MESSAGE_LEN};
use super::{fail_socket, invalid_data, transport_error, Failure};
use crate::sys::scm;

/// How many messages one poll reads before yielding, so a large
/// application state does not hold the executor's thread.
const MESSAGES_PER_POLL: usize = 64;

/// How often one poll retries an acknowledgement after the reactor said
/// "writable" and the socket was full again, before yielding.
const ACK_RETRIES: usize = 4;

/// The receiving end of a channel. One task polls it.
#[derive(Debug)]
pub(crate) struct Receiver {
    io: Async<OwnedFd>,
    inbound: Inbound,
    buf: Box<[u8]>,
    /// The count the sender was last told.
    acked: u64,
    ack_buf: Vec<u8>,
    /// The sender's end is closed: there is no one to acknowledge to.
    sender_gone: bool,
    /// A connection received but not yet acknowledged: it is handed out
    /// only once the sender knows it was taken.
    held: Option<Connection>,
    done: Option<Done>,
}

/// A connection handed over by the previous generation.
#[derive(Debug)]
pub(crate) struct Connection {
    /// The name of the listener it was accepted on.
    pub(crate) listener: String,
    /// The application's state for it (often empty).
    pub(crate) state: Vec<u8>,
    /// The connection itself, close-on-exec. Whatever the previous
    /// generation had not read is still queued on it.
    pub(crate) fd: OwnedFd,
}

/// What [`Receiver::poll_recv`] yields.
#[derive(Debug)]
pub(crate) enum Received {
    /// A connection, already acknowledged: it is this generation's now.
    Connection(Connection),
    /// The application state blob, whole.
    AppState(Vec<u8>),
    /// The sender sent its end marker and closed: everything arrived.
    /// Every later poll says the same.
    Finished,
    /// The sender closed without its end marker: it died or gave up part
    /// way. What arrived before is good. Every later poll says the same.
    Abandoned {
        /// How many messages arrived.
        received: u64,
    },
}

#[derive(Debug)]
enum Done {
    Ended(Ending),
    Failed(Failure),
}

impl From<Ending> for Received {
    fn from(ending: Ending) -> Self {
        match ending {
            Ending::Finished => Received::Finished,
            Ending::Abandoned { received } => Received::Abandoned { received },
        }
    }
}

impl Receiver {
    /// Wraps the new generation's end of a channel.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::Unsupported`] where channels are not supported,
    /// [`io::ErrorKind::InvalidInput`] if `fd` is not a unix
    /// `SOCK_SEQPACKET` socket, or the error from registering it with the
    /// reactor.
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Receiver> {
        scm::check_seqpacket(fd.as_fd())?;
        Ok(Receiver {
            io: Async::new(fd)?,
            inbound: Inbound::new(),
            buf: vec![0; MAX_MESSAGE_LEN].into_boxed_slice(),
            acked: 0,
            ack_buf: Vec::new(),
            sender_gone: false,
            held: None,
            done: None,
        })
    }

    /// Receives the next connection or application state, or learns how
    /// the channel ended.
    ///
    /// Each connection is acknowledged to the sender before it is returned,
    /// so the sender never closes one this generation has. Acknowledgements
    /// go out from inside this call: keep polling until
    /// [`Received::Finished`] or [`Received::Abandoned`].
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidData`] wrapping a
    /// [`StreamError`](super::stream::StreamError) for anything the sender
    /// should not have sent (a malformed message, the wrong number of fds,
    /// another format version, ...); any error from `recvmsg(2)` or from
    /// sending an acknowledgement. The channel is then shut down: nothing
    /// more is taken or acknowledged, the fds of messages not yet taken are
    /// closed, and the sender closes those connections itself. Later polls
    /// return the error again.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Received>> {
        match &self.done {
            Some(Done::Ended(ending)) => return Poll::Ready(Ok((*ending).into())),
            Some(Done::Failed(failure)) => return Poll::Ready(Err(failure.error())),
            None => {}
        }
        if self.held.is_some() {
            return self.poll_hand_out(cx);
        }
        for _ in 0..MESSAGES_PER_POLL {
            let fd = self.io.get_ref().as_fd();
            let received = match scm::recv_with_fds(fd, &mut self.buf, 1) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing queued: acknowledge what was taken before
                    // waiting, so the sender learns of chunks and the end
                    // marker too.
                    if let Poll::Ready(Err(e)) = self.poll_ack(cx) {
                        return Poll::Ready(Err(self.fail(e)));
                    }
                    match self.io.poll_readable(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(self.fail(e))),
                    }
                }
                // The sender closed with acknowledgements unread. Linux
                // reports that once, before the messages still queued.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => continue,
                Err(e) => return Poll::Ready(Err(self.fail(e))),
            };
            if received.is_eof() {
                // The sender may still be reading: tell it, if there is
                // room, what was taken since (the end marker, chunks). Not
                // waiting for room: how the channel ended must not depend
                // on a sender that stopped reading.
                let _ = self.poll_ack(cx);
                return Poll::Ready(Ok(self.end()));
            }
            if let Some(e) = transport_error(&received) {
                return Poll::Ready(Err(self.fail(invalid_data(e))));
            }
            let fd_count = received.fd_count();
            let mut fds = received.fds;
            let delivery = match self.inbound.receive(&self.buf[..received.len], fd_count) {
                Ok(delivery) => delivery,
                // `fds` is dropped: what came with a bad message is closed.
                Err(e) => return Poll::Ready(Err(self.fail(invalid_data(e)))),
            };
            match delivery {
                Delivery::Connection { listener, state } => {
                    let (listener, state) = (listener.to_owned(), state.to_vec());
                    // One fd, checked by `receive`.
                    let Some(fd) = fds.pop() else {
                        let e = io::Error::other("connection message without its fd");
                        return Poll::Ready(Err(self.fail(e)));
                    };
                    self.held = Some(Connection {
                        listener,
                        state,
                        fd,
                    });
                    return self.poll_hand_out(cx);
                }
                Delivery::AppState(blob) => return Poll::Ready(Ok(Received::AppState(blob))),
                Delivery::AppStateChunk | Delivery::End => continue,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    #[cfg(test)]
    /// [`poll_recv`](Self::poll_recv) as a future.
    pub(crate) async fn recv(&mut self) -> io::Result<Received> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Hands out the held connection once its acknowledgement is sent.
    fn poll_hand_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Received>> {
        match self.poll_ack(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.fail(e))),
            Poll::Ready(Ok(())) => match self.held.take() {
                Some(connection) => Poll::Ready(Ok(Received::Connection(connection))),
                None => Poll::Ready(Err(io::Error::other("no connection to hand out"))),
            },
        }
    }

    /// Tells the sender how many messages were taken, if it does not know.
    /// Acknowledgements count from the first message, so one covers all the
    /// messages before it.
    fn poll_ack(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        for _ in 0..ACK_RETRIES {
            let received = self.inbound.received();
            if self.sender_gone || self.acked == received {
                return Poll::Ready(Ok(()));
            }
            // Cannot fail: an acknowledgement has no field to check.
            (Message::Ack { received })
                .encode(&mut self.ack_buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            match scm::send_with_fds(self.io.get_ref().as_fd(), &self.ack_buf, &[]) {
                Ok(()) => {
                    self.acked = received;
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.io.poll_writable(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    }
                }
                // The sender closed its end: it reads no acknowledgement and
                // closes nothing it sent, so what is still queued is ours.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    self.sender_gone = true;
                    return Poll::Ready(Ok(()));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn end(&mut self) -> Received {
        let ending = self.inbound.close();
        self.done = Some(Done::Ended(ending));
        ending.into()
    }

    fn fail(&mut self, error: io::Error) -> io::Error {
        self.held = None;
        let (failure, error) = fail_socket(self.io.get_ref().as_fd(), error);
        self.done = Some(Done::Failed(failure));
        error
    }
}
