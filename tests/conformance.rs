//! The `Tracked` conformance suite: how it classifies a connection, step by
//! step, against what real stacks do to their transport. They flush with
//! nothing buffered, write zero bytes, split a response over many writes,
//! write vectored, read ahead (two requests in one read), leave a read
//! pending mid-message, block on a write, wrap the stream in a handshake
//! (TLS) and say goodbye before the close.
//!
//! Each test drives the tracked stream by hand over a real Unix socket pair
//! (through a scripted wrapper where a stack's behaviour needs one) and
//! asserts the tracker's counts after every step. Reads are polled once
//! (`poll_once`): a pending read is where the tracker decides.

use std::io::{IoSlice, Read, Write};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_io::Async;
use futures_lite::io::BufReader;
use futures_lite::{future, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use seamless::conn::{Config, Counts, Ending};
use seamless::{Shutdown, Tracked, Tracker};

mod common;
use common::within;

struct Pair<S = Async<UnixStream>> {
    tracker: Tracker,
    conn: Tracked<S>,
    peer: UnixStream,
}

fn pair() -> Pair {
    pair_with(Config::default(), |s| s)
}

/// A tracked connection over one end of a socket pair, wrapped by `wrap`.
fn pair_with<S: std::os::fd::AsFd>(
    config: Config,
    wrap: impl FnOnce(Async<UnixStream>) -> S,
) -> Pair<S> {
    let shutdown = Shutdown::new();
    let tracker = Tracker::with_config(&shutdown, config);
    let (ours, peer) = UnixStream::pair().expect("socketpair");
    let conn = tracker.track(wrap(Async::new(ours).expect("async")));
    Pair {
        tracker,
        conn,
        peer,
    }
}

/// The state the tracker counts the one connection in.
fn state(tracker: &Tracker) -> &'static str {
    match tracker.counts() {
        Counts { new: 1, .. } => "new",
        Counts { busy: 1, .. } => "busy",
        Counts { idle: 1, .. } => "idle",
        Counts { closing: 1, .. } => "closing",
        other => panic!("not exactly one connection: {other:?}"),
    }
}

/// Polls one read that must find nothing yet (the peer has sent nothing).
fn read_finds_nothing(conn: &mut (impl AsyncRead + Unpin)) {
    let mut buf = [0u8; 16];
    let polled = future::block_on(future::poll_once(conn.read(&mut buf)));
    assert!(
        polled.is_none(),
        "the read should be pending, got {polled:?}"
    );
}

fn send(peer: &mut UnixStream, bytes: &[u8]) {
    peer.write_all(bytes).expect("peer write");
}

fn read_some(conn: &mut (impl AsyncRead + Unpin)) -> usize {
    let mut buf = [0u8; 64];
    future::block_on(conn.read(&mut buf)).expect("read")
}

/// Reads exactly `n` bytes on the peer's side.
fn receive(peer: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    peer.read_exact(&mut buf).expect("peer read");
    buf
}

/// hyper polls `flush` with nothing buffered while a request is in flight,
/// then polls a read to notice an early EOF: the request must stay Busy.
#[test]
fn empty_flush_mid_request_stays_busy() {
    let Pair {
        tracker,
        mut conn,
        mut peer,
    } = pair();
    assert_eq!(state(&tracker), "new");
    send(&mut peer, b"GET / HTTP/1.1\r\n\r\n");
    assert!(read_some(&mut conn) > 0);
    assert_eq!(state(&tracker), "busy");
    future::block_on(conn.flush()).expect("flush");
    read_finds_nothing(&mut conn);
    assert_eq!(state(&tracker), "busy", "an empty flush is not a response");
}

/// A zero-length write, plain or vectored, is not a response either.
#[test]
fn zero_length_writes_are_no_response() {
    let Pair {
        tracker,
        mut conn,
        mut peer,
    } = pair();
    send(&mut peer, b"request\n");
    assert!(read_some(&mut conn) > 0);
    assert_eq!(state(&tracker), "busy");
    assert_eq!(future::block_on(conn.write(&[])).expect("write"), 0);
    read_finds_nothing(&mut conn);
    assert_eq!(state(&tracker), "busy", "after an empty write");
    let empty = [IoSlice::new(&[]), IoSlice::new(&[])];
    assert_eq!(
        future::block_on(conn.write_vectored(&empty)).expect("write_vectored"),
        0
    );
    read_finds_nothing(&mut conn);
    assert_eq!(state(&tracker), "busy", "after an empty vectored write");
}

/// A response written vectored counts like any other.
#[test]
fn vectored_response_makes_it_idle() {
    let Pair {
        tracker,
        mut conn,
        mut peer,
    } = pair();
    send(&mut peer, b"request\n");
    assert!(read_some(&mut conn) > 0);
    let parts = [IoSlice::new(b"resp"), IoSlice::new(b"onse\n")];
    let n = future::block_on(conn.write_vectored(&parts)).expect("write_vectored");
    assert!(n > 0);
    assert_eq!(state(&tracker), "busy", "no read has looked yet");
    read_finds_nothing(&mut conn);
    assert_eq!(state(&tracker), "idle");
    assert_eq!(receive(&mut peer, n), &b"response\n"[..n]);
}

/// A request that arrives in pieces: the read pending between them, with
/// nothing written, leaves it Busy.
#[test]
fn pending_mid_request_stays_busy() {
    let Pair {
        tracker,
        mut conn,
        mut peer,
    } = pair();
    send(&mut peer, b"GET / HT");
    assert!(read_some(&mut conn) > 0);
    assert_eq!(state(&tracker), "busy");
    read_finds_nothing(&mut conn);
    assert_eq!(state(&tracker), "busy", "half a request");
    send(&mut peer, b"TP/1.1\r\n\r\n");
    assert!(read_some(&mut conn) > 0);
    assert_eq!(state(&tracker), "busy");
    future::block_on(conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n")).expect("write");
    read_finds_nothing(&mut conn);
    assert_eq!(state(&tracker), "idle");
    assert_eq!(receive(&mut peer, 19), b"HTTP/1.1 200 OK\r\n\r\n");
}

/// A transport that takes at most `max_write` bytes per write, as a small
/// socket buffer or a TLS record layer does: a response goes out in pieces.
struct SplitWrites<S> {
    inner: S,
    max_write: usize,
    writes: usize,
}

impl<S: std::os::fd::AsFd> std::os::fd::AsFd for SplitWrites<S> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SplitWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SplitWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = buf.len().min(self.max_write);
        let polled = Pin::new(&mut self.inner).poll_write(cx, &buf[..n]);
        if let Poll::Ready(Ok(_)) = polled {
            self.writes += 1;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A response split over many writes is one response: Busy until a read
/// finds nothing after it, then Idle, and the peer has all of it.
#[test]
fn split_writes_make_one_response() {
    let Pair {
        tracker,
        mut conn,
        mut peer,
    } = pair_with(Config::default(), |s| SplitWrites {
        inner: s,
        max_write: 3,
        writes: 0,
    });
    send(&mut peer, b"request\n");
    assert!(read_some(&mut conn) > 0);
    let response = b"a response in pieces\n";
    for chunk in response.chunks(7) {
        future::block_on(conn.write_all(chunk)).expect("write");
        assert_eq!(state(&tracker), "busy", "mid-response, no read yet");
    }
    assert!(conn.get_ref().writes >= response.len() / 3);
    read_finds_nothing(&mut conn);
    assert_eq!(state(&tracker), "idle");
    assert_eq!(receive(&mut peer, response.len()), response);
}

/// Read ahead: two requests arrive in one read of the transport (a
/// `BufReader`, hyper's read buffer). The second is served from the buffer,
/// with no read of the transport; it stays Busy until the transport's read
/// finds nothing after its response.
#[test]
fn read_ahead_second_request_stays_busy() {
    let Pair {
        tracker,
        conn,
        mut peer,
    } = pair();
    let mut conn = BufReader::new(conn);
    send(&mut peer, b"first\nsecond\n");
    let mut line = String::new();
    future::block_on(conn.read_line(&mut line)).expect("read");
    assert_eq!(line, "first\n");
    assert_eq!(state(&tracker), "busy");
    future::block_on(conn.get_mut().write_all(b"1\n")).expect("write");
    assert_eq!(state(&tracker), "busy");
    line.clear();
    // From the buffer: the transport is not read, the state does not move.
    future::block_on(conn.read_line(&mut line)).expect("read");
    assert_eq!(line, "second\n");
    assert_eq!(state(&tracker), "busy", "the second request is in progress");
    future::block_on(conn.get_mut().write_all(b"2\n")).expect("write");
    line.clear();
    read_finds_nothing(&mut conn);
    assert_eq!(state(&tracker), "idle");
    assert_eq!(receive(&mut peer, 4), b"1\n2\n");
}

/// Writes `chunk`s until the transport blocks (the peer reads nothing);
/// returns how many bytes went out.
fn write_until_blocked(conn: &mut (impl AsyncWrite + Unpin), chunk: &[u8]) -> usize {
    let mut sent = 0;
    // Bounded: a socket buffer is a few hundred KiB at most.
    for _ in 0..100_000 {
        match future::block_on(future::poll_once(conn.write(chunk))) {
            Some(Ok(n)) => sent += n,
            Some(Err(e)) => panic!("write: {e}"),
            None => return sent,
        }
    }
    panic!("the transport never blocked after {sent} bytes");
}

/// A response still blocked in a write is not done: a read that finds
/// nothing meanwhile (hyper polls one while it writes) leaves it Busy, and a
/// drain does not end it. Once the write goes through, it goes idle and the
/// drain ends it.
#[test]
fn blocked_write_stays_busy() {
    let Pair {
        tracker,
        mut conn,
        mut peer,
    } = pair_with(
        Config::default()
            .idle_grace(Duration::ZERO)
            .linger(Duration::from_millis(10)),
        |s| s,
    );
    send(&mut peer, b"big\n");
    assert!(read_some(&mut conn) > 0);
    let chunk = vec![b'x'; 64 * 1024];
    let sent = write_until_blocked(&mut conn, &chunk);
    assert!(sent > 0);
    read_finds_nothing(&mut conn);
    assert_eq!(state(&tracker), "busy", "idle while a write is blocked");

    tracker.shutdown().graceful(Duration::from_secs(60));
    read_finds_nothing(&mut conn);
    assert_eq!(state(&tracker), "busy", "the drain cut a blocked response");

    // The peer drains what was sent; the write goes through.
    peer.set_nonblocking(false).expect("blocking");
    let reader = std::thread::spawn(move || {
        let mut got = 0;
        let mut buf = vec![0; 64 * 1024];
        while got < sent + chunk.len() {
            match peer.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        (peer, got)
    });
    future::block_on(conn.write_all(&vec![b'y'; 64 * 1024])).expect("the rest");
    let (_peer, got) = reader.join().expect("reader");
    assert_eq!(got, sent + 64 * 1024);
    // Now the response is done: the read that finds nothing ends it.
    let n = future::block_on(within("the drain's close", conn.read(&mut [0u8; 8])));
    assert_eq!(n.expect("read"), 0);
    assert_eq!(state(&tracker), "closing");
}

/// `handshake_done`: a handshake's reads and writes look like a request and
/// its response; afterwards the connection is New again and a read that
/// finds nothing leaves it New. Not while a busy guard holds it.
#[test]
fn handshake_done_makes_it_new_again() {
    let Pair {
        tracker,
        mut conn,
        mut peer,
    } = pair();
    let handle = conn.handle();
    send(&mut peer, b"client hello");
    assert!(read_some(&mut conn) > 0);
    assert_eq!(state(&tracker), "busy");
    future::block_on(conn.write_all(b"server hello")).expect("write");
    handle.handshake_done();
    assert_eq!(state(&tracker), "new");
    read_finds_nothing(&mut conn);
    assert_eq!(
        state(&tracker),
        "new",
        "the handshake's write is no response"
    );
    send(&mut peer, b"request");
    assert!(read_some(&mut conn) > 0);
    assert_eq!(state(&tracker), "busy");

    let guard = handle.busy();
    handle.handshake_done();
    assert_eq!(state(&tracker), "busy", "a busy guard holds it");
    drop(guard);
    future::block_on(conn.write_all(b"response")).expect("write");
    read_finds_nothing(&mut conn);
    assert_eq!(state(&tracker), "idle");
}

/// With a handle alive, the drain does not FIN an idle connection at once:
/// the handle's `ending` resolves, the read stays pending, and only when the
/// application neither closes nor drops the handle within the linger time
/// does the read fall back to the lingering close and `Ok(0)`.
#[test]
fn goodbye_falls_back_to_the_close_after_the_linger_time() {
    let linger = Duration::from_millis(300);
    let Pair {
        tracker,
        mut conn,
        mut peer,
    } = pair_with(
        Config::default().idle_grace(Duration::ZERO).linger(linger),
        |s| s,
    );
    let handle = conn.handle();
    let other = handle.clone();
    send(&mut peer, b"request");
    assert!(read_some(&mut conn) > 0);
    future::block_on(conn.write_all(b"response")).expect("write");
    read_finds_nothing(&mut conn);
    assert_eq!(state(&tracker), "idle");
    assert_eq!(receive(&mut peer, 8), b"response");
    assert!(future::block_on(future::poll_once(handle.ending())).is_none());

    let start = Instant::now();
    tracker.shutdown().graceful(Duration::from_secs(60));
    read_finds_nothing(&mut conn);
    assert_eq!(state(&tracker), "closing");
    assert_eq!(
        future::block_on(future::poll_once(other.ending())),
        Some(Ending::Close),
        "the handle was not told"
    );
    // A busy guard taken now does not bring a closing connection back.
    let guard = other.busy();
    assert_eq!(state(&tracker), "closing");
    drop(guard);
    assert_eq!(state(&tracker), "closing");
    peer.set_nonblocking(true).expect("nonblocking");
    let peek = peer.read(&mut [0u8; 8]).map_err(|e| e.kind());
    assert_eq!(
        peek,
        Err(std::io::ErrorKind::WouldBlock),
        "FIN before the goodbye"
    );
    // Nobody says goodbye: after the linger time, FIN and `Ok(0)`.
    let n = future::block_on(within("the fallback", conn.read(&mut [0u8; 8])));
    assert_eq!(n.expect("read"), 0);
    assert!(
        start.elapsed() >= linger,
        "fell back after {:?}",
        start.elapsed()
    );
    peer.set_nonblocking(false).expect("blocking");
    assert_eq!(peer.read(&mut [0u8; 8]).expect("peer read"), 0, "no FIN");
    drop((handle, other));
}

/// Dropping the last handle while the drain waits for a goodbye ends the
/// wait: nobody is left to say it.
#[test]
fn dropping_the_last_handle_ends_the_goodbye_wait() {
    let linger = Duration::from_secs(30);
    let Pair {
        tracker,
        mut conn,
        mut peer,
    } = pair_with(
        Config::default()
            .first_byte_grace(Duration::ZERO)
            .linger(linger),
        |s| s,
    );
    let handle = conn.handle();
    tracker.shutdown().graceful(Duration::from_secs(60));
    // New, no grace: the drain ends it and waits for the goodbye.
    read_finds_nothing(&mut conn);
    assert_eq!(state(&tracker), "closing");
    let start = Instant::now();
    drop(handle);
    // Our FIN, then the peer's: the lingering read ends.
    peer.shutdown(std::net::Shutdown::Write).expect("peer FIN");
    let n = future::block_on(within("the close", conn.read(&mut [0u8; 8])));
    assert_eq!(n.expect("read"), 0);
    assert!(start.elapsed() < linger / 2, "waited {:?}", start.elapsed());
    assert_eq!(peer.read(&mut [0u8; 8]).expect("peer read"), 0);
}

/// The application says goodbye and closes: `close` (`poll_close`) sends
/// our FIN after what was written, and ends at the peer's FIN.
#[test]
fn goodbye_then_close_is_a_lingering_close() {
    let linger = Duration::from_secs(30);
    let Pair {
        tracker,
        mut conn,
        mut peer,
    } = pair_with(
        Config::default().idle_grace(Duration::ZERO).linger(linger),
        |s| s,
    );
    let handle = conn.handle();
    send(&mut peer, b"request");
    assert!(read_some(&mut conn) > 0);
    future::block_on(conn.write_all(b"response")).expect("write");
    read_finds_nothing(&mut conn);
    tracker.shutdown().graceful(Duration::from_secs(60));
    read_finds_nothing(&mut conn);
    assert_eq!(state(&tracker), "closing");
    assert_eq!(
        future::block_on(future::poll_once(handle.ending())),
        Some(Ending::Close)
    );
    let start = Instant::now();
    future::block_on(conn.write_all(b"goodbye")).expect("goodbye");
    let peer = std::thread::spawn(move || {
        let mut got = Vec::new();
        peer.read_to_end(&mut got).expect("peer read");
        // Late bytes after our FIN are swallowed, then the peer's FIN.
        peer.write_all(b"late").expect("late write");
        peer.shutdown(std::net::Shutdown::Write).expect("peer FIN");
        got
    });
    future::block_on(within("close", conn.close())).expect("close");
    assert!(
        start.elapsed() < linger / 2,
        "lingered {:?}",
        start.elapsed()
    );
    assert_eq!(peer.join().expect("peer"), b"responsegoodbye");
    assert_eq!(future::block_on(conn.read(&mut [0u8; 8])).expect("read"), 0);
    drop(handle);
}

// ---------------------------------------------------------------------------
// A stream whose `AsFd` names another socket later (D6).

/// Safe code can make `AsFd` answer with a different socket over time. This
/// one reconnects on its first read: it closes its socket and moves on to a
/// fresh one, and the fd number it was registered under is free for anybody.
struct Reconnecting {
    socket: UnixStream,
    /// The current socket's peer, kept open.
    peer: UnixStream,
    reconnected: bool,
}

impl std::os::fd::AsFd for Reconnecting {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl futures_lite::AsyncRead for Reconnecting {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if !self.reconnected {
            let (socket, peer) = UnixStream::pair().expect("socketpair");
            // The old socket is closed here; its number is free.
            self.socket = socket;
            self.peer = peer;
            self.reconnected = true;
        }
        std::task::Poll::Ready(Ok(0))
    }
}

/// A [`Reconnecting`] stream, tracked and reconnected, and someone else's
/// connection that got the fd number it was registered under. Retried a
/// bounded number of times: a concurrent test may take the freed number.
fn reconnected_with_victim(tracker: &Tracker) -> (Tracked<Reconnecting>, UnixStream, UnixStream) {
    use std::os::fd::AsRawFd;
    for _ in 0..100 {
        let (socket, peer) = UnixStream::pair().expect("socketpair");
        let number = socket.as_raw_fd();
        let mut tracked = tracker.track(Reconnecting {
            socket,
            peer,
            reconnected: false,
        });
        let n = future::block_on(tracked.read(&mut [0u8; 8])).expect("read");
        assert_eq!(n, 0);
        let (victim, victim_peer) = UnixStream::pair().expect("socketpair");
        if victim.as_raw_fd() == number {
            return (tracked, victim, victim_peer);
        }
    }
    panic!("the freed fd number was never reused by the victim socket");
}

/// Dropping a connection while draining discards what is queued on it, so
/// the close sends no RST. It must be the connection's own queue: not that
/// of a socket that now holds the fd number it was registered under.
#[test]
fn drop_discards_only_its_own_socket() {
    use std::io::{Read, Write};
    let shutdown = Shutdown::new();
    let tracker = Tracker::new(&shutdown);
    let _hold = shutdown.guard();
    let (tracked, mut victim, mut victim_peer) = reconnected_with_victim(&tracker);
    victim_peer.write_all(b"precious").expect("write");
    shutdown.graceful(std::time::Duration::from_secs(60));
    drop(tracked);
    victim.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 16];
    let n = victim.read(&mut buf).map_err(|e| e.kind());
    assert_eq!(n, Ok(8), "the victim's queued bytes were discarded");
    assert_eq!(&buf[..8], b"precious");
}

/// At the deadline every connection is shut down both ways. It must be the
/// connection's own socket, not one that now holds its old fd number.
#[test]
fn deadline_shuts_down_only_its_own_socket() {
    use std::io::{Read, Write};
    let shutdown = Shutdown::new();
    let tracker = Tracker::new(&shutdown);
    let (tracked, mut victim, mut victim_peer) = reconnected_with_victim(&tracker);
    shutdown.immediate();
    victim
        .write_all(b"still mine")
        .expect("the victim's write side was shut down");
    let mut buf = [0u8; 16];
    victim_peer
        .read_exact(&mut buf[..10])
        .expect("the victim's peer read");
    assert_eq!(&buf[..10], b"still mine");
    drop(tracked);
}
