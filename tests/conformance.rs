//! How `Tracked` classifies a connection, step by step, under the automatic
//! policy, against what real stacks do to their transport: flush with
//! nothing buffered, write zero bytes, read ahead, poll a read mid-message.
//!
//! Each step drives the tracked stream by hand over a real Unix socket pair
//! and asserts the tracker's counts after it.

use std::os::unix::net::UnixStream;

use async_io::Async;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use seamless::conn::Counts;
use seamless::{Shutdown, Tracked, Tracker};

type Conn = Tracked<Async<UnixStream>>;

struct Pair {
    tracker: Tracker,
    conn: Conn,
    peer: UnixStream,
}

fn pair() -> Pair {
    let shutdown = Shutdown::new();
    let tracker = Tracker::new(&shutdown);
    let (ours, peer) = UnixStream::pair().expect("socketpair");
    let conn = tracker.track(Async::new(ours).expect("async"));
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
fn read_finds_nothing(conn: &mut Conn) {
    let mut buf = [0u8; 16];
    let polled = future::block_on(future::poll_once(conn.read(&mut buf)));
    assert!(
        polled.is_none(),
        "the read should be pending, got {polled:?}"
    );
}

fn send(peer: &mut UnixStream, bytes: &[u8]) {
    use std::io::Write;
    peer.write_all(bytes).expect("peer write");
}

fn read_some(conn: &mut Conn) -> usize {
    let mut buf = [0u8; 64];
    future::block_on(conn.read(&mut buf)).expect("read")
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
