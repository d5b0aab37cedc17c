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
