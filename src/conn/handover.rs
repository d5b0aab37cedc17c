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

/// An opted-in listener's link to the successor, shared by its connections
/// (behind one `Arc`).
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

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::task::Waker;
    use std::time::Duration;

    use std::io::Write;

    use async_io::Async;
    use futures_lite::{future, AsyncRead, AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::conn::{Config, Tracker};
    use crate::Shutdown;

    /// A successor whose channel is full until `room` is set, and which
    /// counts what it was sent.
    #[derive(Default)]
    struct Stub {
        room: std::sync::atomic::AtomicBool,
        waiting: Mutex<Option<Waker>>,
        sent: AtomicUsize,
        /// What the previous generation handed over, to receive.
        received: Mutex<Vec<OwnedFd>>,
        fell_back: AtomicUsize,
    }

    impl Stub {
        fn make_room(&self) {
            self.room.store(true, Ordering::SeqCst);
            if let Some(waker) = self.waiting.lock().unwrap().take() {
                waker.wake();
            }
        }
    }

    impl Successor for Stub {
        fn takes(&self) -> bool {
            true
        }

        fn poll_hand_over(
            &self,
            cx: &mut Context<'_>,
            _listener: &str,
            _state: &[u8],
            _fd: BorrowedFd<'_>,
        ) -> Poll<io::Result<()>> {
            if !self.room.load(Ordering::SeqCst) {
                *self.waiting.lock().unwrap() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            self.sent.fetch_add(1, Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }

        fn fell_back(&self, _listener: &str, _error: &io::Error) {
            self.fell_back.fetch_add(1, Ordering::SeqCst);
        }

        fn poll_received(
            &self,
            _cx: &mut Context<'_>,
            _listener: &str,
        ) -> Option<(OwnedFd, Vec<u8>)> {
            self.received
                .lock()
                .unwrap()
                .pop()
                .map(|fd| (fd, Vec::new()))
        }
    }

    fn poll_read_once<S: AsyncRead + Unpin>(stream: &mut S) -> Poll<io::Result<usize>> {
        let mut buf = [0u8; 16];
        future::block_on(future::poll_once(future::poll_fn(|cx| {
            Pin::new(&mut *stream).poll_read(cx, &mut buf)
        })))
        .map_or(Poll::Pending, Poll::Ready)
    }

    /// A connection of an opted-in listener that has served a request, is
    /// idle, and waits for room on the (full) channel to move: the drain
    /// after a handover has reached it.
    struct Waiting {
        _client: TcpStream,
        _shutdown: Shutdown,
        tracker: Tracker,
        stub: Arc<Stub>,
        conn: crate::Tracked<Async<TcpStream>>,
    }

    fn waiting_to_move() -> Waiting {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let shutdown = Shutdown::new();
        let tracker = Tracker::with_config(
            &shutdown,
            Config::default()
                .first_byte_grace(Duration::ZERO)
                .idle_grace(Duration::ZERO),
        );
        let stub = Arc::new(Stub::default());
        let mut conn = tracker.track(Async::new(server).unwrap());
        let link = Handover {
            successor: stub.clone(),
            listener: "web".into(),
        };
        conn.set_handover(Arc::new(link), Vec::new());
        // A request and its response: idle.
        client.write_all(b"ping").unwrap();
        let mut request = [0u8; 4];
        future::block_on(conn.read_exact(&mut request)).unwrap();
        future::block_on(conn.write_all(b"pong")).unwrap();
        assert!(shutdown.hand_over().is_some());
        // The drain reaches it idle: it is to move, and waits for room.
        assert!(poll_read_once(&mut conn).is_pending());
        assert_eq!(tracker.counts().closing, 1);
        Waiting {
            _client: client,
            _shutdown: shutdown,
            tracker,
            stub,
            conn,
        }
    }

    /// A connection waiting for room on the channel that becomes busy
    /// again (a guard taken from elsewhere, as over split halves) is not
    /// sent mid-response: it stays until it is idle again, then moves.
    #[test]
    fn a_connection_busy_again_while_waiting_to_move_stays_until_idle() {
        // Kept whole: the client must stay connected.
        let mut waiting = waiting_to_move();
        // Busy again before there is room.
        let busy = waiting.conn.busy();
        waiting.stub.make_room();
        assert!(
            poll_read_once(&mut waiting.conn).is_pending(),
            "not sent while busy"
        );
        assert_eq!(waiting.stub.sent.load(Ordering::SeqCst), 0);
        assert_eq!(waiting.tracker.counts().busy, 1);
        // Idle again: now it moves.
        drop(busy);
        assert!(matches!(
            poll_read_once(&mut waiting.conn),
            Poll::Ready(Ok(0))
        ));
        assert_eq!(waiting.stub.sent.load(Ordering::SeqCst), 1);
    }

    /// The same with a write that blocks (the client reads nothing) while
    /// the connection waits for room: not sent until the write is through.
    #[test]
    fn a_connection_writing_while_waiting_to_move_stays_until_written() {
        use futures_lite::AsyncWrite;
        // Kept whole: the client stays connected, reading nothing.
        let mut waiting = waiting_to_move();

        // A response too big for the socket buffers, the client not reading.
        let chunk = vec![0u8; 1 << 16];
        let mut blocked = false;
        for _ in 0..1024 {
            let wrote = future::block_on(future::poll_once(future::poll_fn(|cx| {
                Pin::new(&mut waiting.conn).poll_write(cx, &chunk)
            })));
            if wrote.is_none() {
                blocked = true;
                break;
            }
        }
        assert!(blocked, "the socket buffers filled up");
        waiting.stub.make_room();
        assert!(
            poll_read_once(&mut waiting.conn).is_pending(),
            "not sent mid-write"
        );
        assert_eq!(waiting.stub.sent.load(Ordering::SeqCst), 0);
    }

    /// A listener of a kind that cannot adopt a handed-over connection
    /// (the default `adopt`), and that never accepts one of its own.
    struct CannotAdopt;

    impl crate::conn::Accept for CannotAdopt {
        type Stream = Async<TcpStream>;
        type Addr = std::net::SocketAddr;

        fn poll_accept(
            &mut self,
            _cx: &mut Context<'_>,
        ) -> Poll<io::Result<Option<(Self::Stream, Self::Addr)>>> {
            Poll::Pending
        }
    }

    /// A handed-over connection the listener cannot adopt is closed
    /// gracefully (the client reads EOF, not a reset) and counted, not
    /// dropped in silence.
    #[test]
    fn a_connection_the_listener_cannot_adopt_is_closed_gracefully() {
        use std::io::Read;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        // Sent before the handoff, never read: a plain close would reset.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let shutdown = Shutdown::new();
        let tracker = Tracker::new(&shutdown);
        let stub = Arc::new(Stub::default());
        stub.received.lock().unwrap().push(server.into());
        let mut tracked = tracker.listen(CannotAdopt);
        tracked.set_handover(Handover {
            successor: stub.clone(),
            listener: "web".into(),
        });
        let accepted = future::block_on(future::poll_once(tracked.accept()));
        assert!(accepted.is_none(), "nothing to accept");
        assert_eq!(stub.fell_back.load(Ordering::SeqCst), 1);
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).unwrap(), 0, "EOF, no reset");
    }
}
