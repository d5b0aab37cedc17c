//! Drain behaviour on real sockets (127.0.0.1, port 0), no mocks.
//!
//! Every scenario is an `async fn` that spawns nothing: servers and clients
//! run side by side with `zip`/`or` and a `FuturesUnordered`, so any executor
//! can drive it. The `executors!` list at the bottom runs each scenario under
//! `futures::executor::block_on`, `async_io::block_on`, and smol's executor
//! (`smol::spawn` + `smol::block_on`).
//!
//! Tests synchronise on events: channels, counters reaching a value, sockets
//! answering. Every wait is bounded by `common::LIMIT` and fails the test when it is
//! exceeded. The only timed pauses are observation windows for "this must
//! *not* happen" checks.

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures::stream::{FuturesUnordered, StreamExt};
use futures_lite::future;
use futures_lite::io::BufReader;
use futures_lite::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use seamless::conn::{Accepted, Config, Counts, Incoming, Policy};
use seamless::{Phase, Shutdown, Tracked, TrackedListener, Tracker};
use smol::channel::{self, Receiver};

mod common;
use common::{counts, wait_counts, wait_exact, within};

/// How much later than planned a timed event may come and still pass.
const SLACK: Duration = Duration::from_secs(5);
const GRACE: Duration = Duration::from_millis(300);
const LINGER: Duration = Duration::from_millis(100);
/// Long enough that no test reaches it unless it means to.
const DEADLINE: Duration = Duration::from_secs(15);

type Conn = Tracked<Async<TcpStream>>;
type Listener = TrackedListener<Async<TcpListener>>;

// ---------------------------------------------------------------------------
// Harness

struct Server {
    shutdown: Shutdown,
    tracker: Tracker,
    listener: Listener,
    addr: SocketAddr,
}

fn config() -> Config {
    Config::default().first_byte_grace(GRACE).linger(LINGER)
}

fn server(config: Config) -> Server {
    let shutdown = Shutdown::new();
    let tracker = Tracker::with_config(&shutdown, config);
    let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
    let addr = listener.get_ref().local_addr().expect("local_addr");
    let listener = tracker.listen(listener);
    Server {
        shutdown,
        tracker,
        listener,
        addr,
    }
}

async fn accept_one(listener: &mut Listener) -> Conn {
    within("accept", listener.accept())
        .await
        .expect("accept failed")
        .expect("accept returned None before draining")
        .0
}

/// The server side of every scenario: echoes lines until the read returns
/// `Ok(0)`, then returns how many lines it answered.
///
/// A line starting with `hold` is answered only once `release` yields (the
/// test decides when the in-flight request ends); `stuck` is never answered.
async fn echo(conn: Conn, release: Option<Receiver<()>>) -> io::Result<usize> {
    let mut conn = BufReader::new(conn);
    let mut line = String::new();
    let mut served = 0;
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Ok(served);
        }
        if line.starts_with("stuck") {
            future::pending::<()>().await;
        }
        if line.starts_with("hold") {
            let release = release.as_ref().expect("no release channel for hold");
            release.recv().await.expect("release channel closed");
        }
        conn.get_mut().write_all(line.as_bytes()).await?;
        served += 1;
    }
}

/// Accepts until draining starts, serves each connection with [`echo`] while
/// accepting more, and returns the lines answered per connection once every
/// connection has ended.
async fn serve(listener: &mut Listener, release: Option<Receiver<()>>) -> Vec<usize> {
    enum Event {
        Accepted(Option<Conn>),
        Done(usize),
    }
    let mut conns = FuturesUnordered::new();
    let mut served = Vec::new();
    let mut accepting = true;
    while accepting || !conns.is_empty() {
        let event = future::or(
            async {
                if !accepting {
                    return future::pending().await;
                }
                let accepted = listener.accept().await.expect("accept failed");
                Event::Accepted(accepted.map(|(conn, _)| conn))
            },
            async {
                match conns.next().await {
                    Some(n) => Event::Done(n),
                    None => future::pending().await,
                }
            },
        )
        .await;
        match event {
            Event::Accepted(Some(conn)) => {
                let release = release.clone();
                conns.push(async move { echo(conn, release).await.expect("echo failed") });
            }
            Event::Accepted(None) => accepting = false,
            Event::Done(n) => served.push(n),
        }
    }
    served
}

async fn connect(addr: SocketAddr) -> Async<TcpStream> {
    within("connect", Async::<TcpStream>::connect(addr))
        .await
        .expect("connect")
}

async fn expect_reply(client: &mut Async<TcpStream>, line: &str) {
    let mut buf = vec![0; line.len()];
    if let Err(e) = within("reply", client.read_exact(&mut buf)).await {
        panic!("reading the reply to {line:?}: {e} ({:?})", e.kind());
    }
    assert_eq!(String::from_utf8_lossy(&buf), line);
}

/// Sends `line` and waits for its echo.
async fn ask(client: &mut Async<TcpStream>, line: &str) {
    client.write_all(line.as_bytes()).await.expect("send");
    expect_reply(client, line).await;
}

/// Reads to the end: a clean EOF with nothing before it, not a reset.
async fn expect_eof(client: &mut Async<TcpStream>) {
    let mut rest = Vec::new();
    match within("EOF", client.read_to_end(&mut rest)).await {
        Ok(_) => assert!(
            rest.is_empty(),
            "unexpected bytes before EOF: {:?}",
            String::from_utf8_lossy(&rest)
        ),
        Err(e) => panic!("expected a clean EOF, got {e} ({:?})", e.kind()),
    }
}

/// No RST reached the client. Call once the server side has closed.
fn assert_no_reset(client: &Async<TcpStream>) {
    let error = client.get_ref().take_error().expect("SO_ERROR");
    assert!(
        error.is_none(),
        "the server reset the connection (SO_ERROR is {error:?}; EPIPE means \
         the RST came after the server's FIN)"
    );
}

/// Whether the peer has closed its write side (`Some(true)`), or the
/// connection is open with nothing to read (`Some(false)`). Never blocks.
fn peer_closed(stream: &TcpStream) -> Option<bool> {
    match stream.peek(&mut [0; 1]) {
        Ok(0) => Some(true),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Scenarios

/// (a) Draining ends the accept loop with `Ok(None)` and closes the listener's
/// fd: a new connect is refused although the `TrackedListener` is still alive.
async fn accept_ends_and_listener_closes() {
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(config());

    // Before the drain the listener accepts.
    let client = connect(addr).await;
    let conn = accept_one(&mut listener).await;
    assert_eq!(tracker.counts(), counts(1, 0, 0, 0));
    drop((conn, client));
    assert_eq!(tracker.counts(), Counts::default());

    // An accept loop parked in `accept` when draining starts leaves it.
    let (accepted, ()) = within(
        "the accept loop to end",
        future::zip(
            async {
                let mut accepted = 0;
                while listener.accept().await.expect("accept failed").is_some() {
                    accepted += 1;
                }
                accepted
            },
            async {
                future::yield_now().await; // let the loop park in accept
                shutdown.graceful(DEADLINE);
            },
        ),
    )
    .await;
    assert_eq!(accepted, 0);
    assert!(listener.get_ref().is_none(), "the listener is still open");

    // The listener value still exists, yet nobody listens on the port.
    let refused = within("connect", Async::<TcpStream>::connect(addr))
        .await
        .expect_err("a connect after the drain must be refused");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");
    let refused = TcpStream::connect(addr).expect_err("blocking connect after the drain");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");

    // And it stays shut.
    assert!(listener.accept().await.expect("accept").is_none());
    within("stopped", shutdown.stopped()).await;
    assert_eq!(shutdown.phase(), Phase::Stopped);
}

/// (b) A request in flight when draining starts is answered in full, and then
/// the connection ends with a clean EOF.
async fn in_flight_request_completes() {
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(config());
    let (release, released) = channel::bounded(1);
    let client = async {
        let mut client = connect(addr).await;
        client.write_all(b"hold 1\n").await.expect("send");
        wait_exact(&tracker, counts(0, 1, 0, 0)).await;

        let deadline = shutdown.graceful(DEADLINE).expect("deadline");
        // The drain leaves the busy connection alone.
        assert_eq!(tracker.counts(), counts(0, 1, 0, 0));
        release.send(()).await.expect("release");
        expect_reply(&mut client, "hold 1\n").await;
        expect_eof(&mut client).await;
        within("stopped", shutdown.stopped()).await;
        assert!(Instant::now() < deadline, "stopped only at the deadline");
        client
    };
    let (served, client) = within(
        "scenario",
        future::zip(serve(&mut listener, Some(released)), client),
    )
    .await;
    assert_eq!(served, [1]);
    assert_no_reset(&client);
    assert_eq!(tracker.counts(), Counts::default());
}

/// (c) An idle keep-alive connection is closed at the drain: the client reads
/// `Ok(0)`, not `ECONNRESET`.
async fn idle_connection_gets_eof() {
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(config());
    let client = async {
        let mut client = connect(addr).await;
        ask(&mut client, "hello\n").await;
        wait_exact(&tracker, counts(0, 0, 1, 0)).await;

        let start = Instant::now();
        let deadline = shutdown.graceful(DEADLINE).expect("deadline");
        expect_eof(&mut client).await;
        within("stopped", shutdown.stopped()).await;
        // The server lingered before it closed, and did not wait for the deadline.
        assert!(
            start.elapsed() >= LINGER,
            "closed after {:?}",
            start.elapsed()
        );
        assert!(Instant::now() < deadline, "stopped only at the deadline");
        client
    };
    let (served, client) =
        within("scenario", future::zip(serve(&mut listener, None), client)).await;
    assert_eq!(served, [1]);
    assert_no_reset(&client);
    assert_eq!(tracker.counts(), Counts::default());
}

/// The keep-alive race, the side that can be won: the next request on an
/// idle connection reaches the server just as draining starts (sent, then
/// the drain triggered with no await in between, before the server task has
/// run). It is already in the socket's queue, so it is served, then the
/// connection closes cleanly.
async fn request_racing_the_drain_is_served() {
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(config());
    let client = async {
        let mut client = connect(addr).await;
        ask(&mut client, "first\n").await;
        wait_exact(&tracker, counts(0, 0, 1, 0)).await;

        // A plain write on the socket: no await, so no server task runs
        // before the drain starts. (Seven bytes fit an empty send buffer.)
        io::Write::write_all(&mut client.get_ref(), b"second\n").expect("send");
        shutdown.graceful(DEADLINE);
        expect_reply(&mut client, "second\n").await;
        expect_eof(&mut client).await;
        within("stopped", shutdown.stopped()).await;
        client
    };
    let (served, client) =
        within("scenario", future::zip(serve(&mut listener, None), client)).await;
    assert_eq!(served, [2]);
    assert_no_reset(&client);
    assert_eq!(tracker.counts(), Counts::default());
}

/// The keep-alive race, won by waiting: the next request on an idle
/// connection arrives a little *after* draining started, inside the idle
/// grace. It is served, then the connection closes cleanly.
async fn request_inside_idle_grace_is_served() {
    let idle_grace = Duration::from_secs(3);
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(config().idle_grace(idle_grace));
    let client = async {
        let mut client = connect(addr).await;
        ask(&mut client, "first\n").await;
        wait_exact(&tracker, counts(0, 0, 1, 0)).await;

        let start = Instant::now();
        shutdown.graceful(DEADLINE);
        // Only once the drain has surely begun: the server is waiting.
        wait_counts(&tracker, "drain seen", |_| shutdown.is_draining()).await;
        ask(&mut client, "second\n").await;
        assert!(start.elapsed() < idle_grace, "the test sent too late");
        expect_eof(&mut client).await;
        within("stopped", shutdown.stopped()).await;
        client
    };
    let (served, client) =
        within("scenario", future::zip(serve(&mut listener, None), client)).await;
    assert_eq!(served, [2]);
    assert_no_reset(&client);
}

/// A client that keeps sending requests, each inside the idle grace of the
/// last, cannot hold the drain: the grace counts from the drain's start at
/// the latest, so the connection is closed at its first idle moment after
/// that, long before the deadline.
async fn steady_requests_cannot_hold_the_drain() {
    let idle_grace = Duration::from_millis(300);
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(config().idle_grace(idle_grace));
    let client = async {
        let mut client = connect(addr).await;
        ask(&mut client, "0\n").await;
        wait_exact(&tracker, counts(0, 0, 1, 0)).await;
        let deadline = shutdown.graceful(DEADLINE).expect("deadline");
        let mut answered = 1;
        // Bounded: far more rounds than the grace allows.
        for round in 1..1000 {
            Timer::after(Duration::from_millis(20)).await;
            let line = format!("{round}\n");
            if client.write_all(line.as_bytes()).await.is_err() {
                break;
            }
            let mut buf = vec![0; line.len()];
            match within("reply or EOF", client.read(&mut buf)).await {
                Ok(0) => break,
                Ok(_) => answered += 1,
                Err(e) => panic!("reset instead of EOF: {e}"),
            }
        }
        within("stopped", shutdown.stopped()).await;
        assert!(Instant::now() < deadline, "held until the deadline");
        (client, answered)
    };
    let (served, (client, answered)) =
        within("scenario", future::zip(serve(&mut listener, None), client)).await;
    assert!(answered > 1, "requests inside the grace are served");
    assert_eq!(
        served,
        [answered],
        "every request the server took was answered"
    );
    assert_no_reset(&client);
}

/// `close_lingering`: the application ends a connection itself. The peer
/// gets the whole response and EOF, bytes it sends afterwards are swallowed
/// (no RST), and the close ends at the peer's FIN, not after the linger time.
async fn close_lingering_ends_at_the_peers_fin() {
    let linger = Duration::from_secs(10);
    let Server {
        tracker,
        mut listener,
        addr,
        ..
    } = server(config().linger(linger));
    let server = async {
        let mut conn = accept_one(&mut listener).await;
        let mut buf = [0; 6];
        conn.read_exact(&mut buf).await.expect("request");
        conn.write_all(b"bye\n").await.expect("response");
        let start = Instant::now();
        conn.close_lingering().await;
        let took = start.elapsed();
        assert_eq!(conn.read(&mut buf).await.expect("read after close"), 0);
        took
    };
    let client = async {
        let mut client = connect(addr).await;
        client.write_all(b"hello\n").await.expect("send");
        expect_reply(&mut client, "bye\n").await;
        let mut buf = [0; 8];
        assert_eq!(within("FIN", client.read(&mut buf)).await.expect("EOF"), 0);
        wait_counts(&tracker, "closing", |c| c.closing == 1).await;
        client.write_all(b"late\n").await.expect("write after FIN");
        client
            .get_ref()
            .shutdown(std::net::Shutdown::Write)
            .expect("our FIN");
        client
    };
    let (took, client) = within("scenario", future::zip(server, client)).await;
    assert!(
        took < linger / 2,
        "lingered {took:?}: the peer's FIN should end it"
    );
    assert_no_reset(&client);
    wait_exact(&tracker, Counts::default()).await;
}

/// (d) A client that writes after it has seen the server's FIN (the keep-alive
/// race, lost anyway) must not be answered with an RST: the server lingers,
/// discarding what arrives, and closes cleanly.
///
/// Linux answers data that reaches a socket in FIN_WAIT whose read side was
/// shut down with an RST (`TCPAbortOnData` in /proc/net/netstat), so this
/// also checks that a drained connection's read side is not `SHUT_RD` before
/// the FIN. The RST is invisible to the client's reads (they already return
/// EOF); it shows as `SO_ERROR` (EPIPE) and a failing next write.
async fn data_after_fin_is_not_reset() {
    let linger = Duration::from_millis(500);
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(config().linger(linger));
    let client = async {
        let mut client = connect(addr).await;
        ask(&mut client, "hello\n").await;
        wait_exact(&tracker, counts(0, 0, 1, 0)).await;

        shutdown.graceful(DEADLINE);
        let mut buf = [0; 16];
        let n = within("FIN", client.read(&mut buf))
            .await
            .expect("read up to the FIN");
        assert_eq!(n, 0, "expected EOF (the server's FIN)");

        // The server is lingering now; it must swallow this, not reset.
        client
            .write_all(b"late request\n")
            .await
            .expect("write after FIN");
        assert_eq!(
            tracker.counts(),
            counts(0, 0, 0, 1),
            "the late bytes must arrive while the server lingers"
        );
        wait_exact(&tracker, Counts::default()).await;
        within("stopped", shutdown.stopped()).await;

        assert_no_reset(&client);
        let n = within("read after close", client.read(&mut buf))
            .await
            .expect("read after the server closed");
        assert_eq!(n, 0);
        client
    };
    let (served, client) =
        within("scenario", future::zip(serve(&mut listener, None), client)).await;
    assert_eq!(served, [1]);
    assert_no_reset(&client);
}

/// (e, first half) A connection that never sends a byte holds the shutdown for
/// the first-byte grace, no longer, and then sees a clean EOF.
async fn silent_connection_held_for_grace_only() {
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(config());
    let client = async {
        let mut client = connect(addr).await;
        wait_exact(&tracker, counts(1, 0, 0, 0)).await;

        let start = Instant::now();
        shutdown.graceful(DEADLINE);
        expect_eof(&mut client).await;
        let closed = start.elapsed();
        within("stopped", shutdown.stopped()).await;
        let stopped = start.elapsed();
        assert!(
            closed >= GRACE,
            "closed after {closed:?}, before the grace {GRACE:?}"
        );
        assert!(
            stopped >= GRACE,
            "stopped after {stopped:?}, before the grace"
        );
        assert!(stopped < GRACE + SLACK, "stopped only after {stopped:?}");
        client
    };
    let (served, client) =
        within("scenario", future::zip(serve(&mut listener, None), client)).await;
    assert_eq!(served, [0]);
    assert_no_reset(&client);
    assert_eq!(tracker.counts(), Counts::default());
}

/// (e, second half) A connection accepted just before the drain whose request
/// arrives inside the first-byte grace is served in full, then closed
/// cleanly.
async fn request_within_grace_is_served() {
    let grace = Duration::from_secs(2);
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(config().first_byte_grace(grace));
    let client = async {
        let mut client = connect(addr).await;
        wait_exact(&tracker, counts(1, 0, 0, 0)).await;

        let start = Instant::now();
        let deadline = shutdown.graceful(DEADLINE).expect("deadline");
        within("draining", shutdown.draining()).await;
        // A request still on its way: it lands well inside the grace.
        Timer::after(grace / 10).await;
        ask(&mut client, "late but welcome\n").await;
        assert!(start.elapsed() < grace, "the test itself was too slow");
        expect_eof(&mut client).await;
        within("stopped", shutdown.stopped()).await;
        assert!(Instant::now() < deadline);
        client
    };
    let (served, client) =
        within("scenario", future::zip(serve(&mut listener, None), client)).await;
    assert_eq!(served, [1]);
    assert_no_reset(&client);
    assert_eq!(tracker.counts(), Counts::default());
}

/// (f) A connection still busy at the deadline is shut down both ways then,
/// even though its handler never lets go of the stream.
async fn busy_past_deadline_is_force_closed() {
    let deadline_in = Duration::from_millis(500);
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(config());
    let (give_up, gave_up) = channel::bounded::<()>(1);
    let server = future::or(
        async {
            serve(&mut listener, None).await;
            panic!("the stuck handler returned");
        },
        async {
            gave_up.recv().await.expect("give_up");
        },
    );
    let client = async {
        let mut client = connect(addr).await;
        client.write_all(b"stuck\n").await.expect("send");
        wait_exact(&tracker, counts(0, 1, 0, 0)).await;

        let start = Instant::now();
        shutdown.graceful(deadline_in);
        within("stopped", shutdown.stopped()).await;
        let took = start.elapsed();
        assert!(
            took >= deadline_in,
            "stopped after {took:?}, before the deadline"
        );
        assert!(took < deadline_in + SLACK, "stopped only after {took:?}");
        assert_eq!(shutdown.phase(), Phase::Stopped);

        // The handler still holds the stream, but the client sees it closed.
        assert_eq!(tracker.counts().total, 1);
        let mut rest = Vec::new();
        let closed = within("the forced close", client.read_to_end(&mut rest)).await;
        assert!(rest.is_empty(), "no reply was due: {rest:?}");
        assert!(
            matches!(&closed, Ok(0)) || closed.is_err(),
            "the connection is still open: {closed:?}"
        );
        give_up.send(()).await.expect("give up");
    };
    within("scenario", future::zip(server, client)).await;
    assert_eq!(tracker.counts(), Counts::default());
}

/// (g) The counts follow each connection: New after accept, Busy during a
/// request, Idle after the response, Closing while lingering, and all zero
/// once the drain is over.
async fn counts_follow_connection_states() {
    let linger = Duration::from_millis(300);
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(config().linger(linger));
    let (release, released) = channel::bounded(1);
    let client = async {
        assert_eq!(tracker.counts(), Counts::default());
        let mut silent = connect(addr).await;
        wait_exact(&tracker, counts(1, 0, 0, 0)).await;

        let mut busy = connect(addr).await;
        wait_exact(&tracker, counts(2, 0, 0, 0)).await;
        busy.write_all(b"hold\n").await.expect("send");
        wait_exact(&tracker, counts(1, 1, 0, 0)).await;

        let mut idle = connect(addr).await;
        wait_exact(&tracker, counts(2, 1, 0, 0)).await;
        idle.write_all(b"hi\n").await.expect("send");
        expect_reply(&mut idle, "hi\n").await;
        wait_exact(&tracker, counts(1, 1, 1, 0)).await;

        shutdown.graceful(DEADLINE);
        // The idle one lingers; the silent one is within its grace; the busy
        // one is left alone.
        wait_exact(&tracker, counts(1, 1, 0, 1)).await;
        expect_eof(&mut idle).await;
        expect_eof(&mut silent).await;
        wait_exact(&tracker, counts(0, 1, 0, 0)).await;

        release.send(()).await.expect("release");
        expect_reply(&mut busy, "hold\n").await;
        expect_eof(&mut busy).await;
        within("stopped", shutdown.stopped()).await;
        assert_eq!(tracker.counts(), Counts::default());
        [silent, busy, idle]
    };
    let (mut served, clients) = within(
        "scenario",
        future::zip(serve(&mut listener, Some(released)), client),
    )
    .await;
    served.sort_unstable();
    assert_eq!(served, [0, 1, 1]);
    for client in &clients {
        assert_no_reset(client);
    }
}

/// (i) Manual policy: a connection whose application holds a `BusyGuard` is
/// not touched by the drain; once the guard drops, its pending read returns
/// `Ok(0)` and the client sees a clean EOF.
async fn manual_guard_holds_connection() {
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(config().policy(Policy::Manual));
    let (push, pushed) = channel::bounded::<()>(1);
    let (drop_guard, guard_dropped) = channel::bounded::<()>(1);
    let read_ended = AtomicBool::new(false);

    let server = async {
        let conn = accept_one(&mut listener).await;
        // A subscription: busy for as long as the server pushes.
        let guard = conn.busy();
        let spy = TcpStream::from(conn.as_fd().try_clone_to_owned().expect("dup"));
        let (mut reader, mut writer) = futures_lite::io::split(conn);
        writer.write_all(b"welcome\n").await.expect("write");
        let read = async {
            let mut buf = [0; 64];
            let read = reader.read(&mut buf).await;
            read_ended.store(true, Ordering::SeqCst);
            read
        };
        let pusher = async {
            pushed.recv().await.expect("push");
            // Draining has started: the read side must not have been shut.
            assert_eq!(
                peer_closed(&spy),
                Some(false),
                "the drain shut the read side"
            );
            drop(spy);
            writer
                .write_all(b"push\n")
                .await
                .expect("push after the drain");
            guard_dropped.recv().await.expect("drop_guard");
            drop(guard);
        };
        let (read, ()) = future::zip(read, pusher).await;
        assert_eq!(
            read.expect("read"),
            0,
            "the pending read must end with Ok(0)"
        );
    };
    let client = async {
        let mut client = connect(addr).await;
        expect_reply(&mut client, "welcome\n").await;
        wait_exact(&tracker, counts(0, 1, 0, 0)).await;

        let start = Instant::now();
        shutdown.graceful(DEADLINE);
        assert_eq!(tracker.counts(), counts(0, 1, 0, 0));
        push.send(()).await.expect("push");
        expect_reply(&mut client, "push\n").await;

        // Observe for longer than a New or Idle connection would survive.
        Timer::after(2 * (GRACE + LINGER)).await;
        assert!(
            !read_ended.load(Ordering::SeqCst),
            "the read ended while the guard was held"
        );
        assert_eq!(tracker.counts(), counts(0, 1, 0, 0));
        assert_eq!(
            peer_closed(client.get_ref()),
            Some(false),
            "closed while the guard was held"
        );

        drop_guard.send(()).await.expect("drop guard");
        expect_eof(&mut client).await;
        within("stopped", shutdown.stopped()).await;
        assert!(start.elapsed() < DEADLINE);
        client
    };
    let ((), client) = within("scenario", future::zip(server, client)).await;
    assert!(read_ended.load(Ordering::SeqCst));
    assert_no_reset(&client);
    assert_eq!(tracker.counts(), Counts::default());
}

/// `Tracked::busy` promises, under either policy: "When the last guard is
/// dropped during a drain, the connection's read side is shut down, just as
/// for an idle connection." Under the automatic policy: a server push while
/// the read is pending, the guard drops during the drain; the connection is
/// idle then and must end well before the deadline.
async fn automatic_guard_drop_ends_idle_connection() {
    let deadline_in = Duration::from_secs(6);
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(config());
    let (drop_guard, guard_dropped) = channel::bounded::<()>(1);

    let server = async {
        let mut conn = accept_one(&mut listener).await;
        let mut buf = [0; 64];
        let n = conn.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"subscribe\n");
        let guard = conn.busy();
        let (mut reader, mut writer) = futures_lite::io::split(conn);
        let read = async { reader.read(&mut buf).await };
        let pusher = async {
            writer.write_all(b"event\n").await.expect("push");
            guard_dropped.recv().await.expect("drop_guard");
            drop(guard);
        };
        let (read, ()) = future::zip(read, pusher).await;
        assert_eq!(read.expect("read"), 0);
    };
    let client = async {
        let mut client = connect(addr).await;
        client.write_all(b"subscribe\n").await.expect("send");
        expect_reply(&mut client, "event\n").await;
        wait_exact(&tracker, counts(0, 1, 0, 0)).await;
        shutdown.graceful(deadline_in);
        assert_eq!(tracker.counts(), counts(0, 1, 0, 0));

        drop_guard.send(()).await.expect("drop guard");
        let dropped = Instant::now();
        let ((), ()) = future::zip(shutdown.stopped(), expect_eof(&mut client)).await;
        let took = dropped.elapsed();
        assert!(
            took < deadline_in / 2,
            "the idle connection was closed {took:?} after its last busy guard \
             dropped, only by the deadline ({deadline_in:?})"
        );
        client
    };
    let ((), client) = within("scenario", future::zip(server, client)).await;
    assert_no_reset(&client);
    assert_eq!(tracker.counts(), Counts::default());
}

/// `immediate()` with a connection in progress: straight to Stopped, and the
/// connection is shut down both ways at once.
async fn immediate_closes_everything_now() {
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(config());
    let mut client = connect(addr).await;
    let conn = accept_one(&mut listener).await;
    assert_eq!(tracker.counts(), counts(1, 0, 0, 0));

    shutdown.immediate();
    assert_eq!(shutdown.phase(), Phase::Stopped);
    // No grace for the New connection: its client sees the FIN at once,
    // while the application still holds the stream.
    within("stopped", shutdown.stopped()).await;
    expect_eof(&mut client).await;
    assert!(listener.accept().await.expect("accept").is_none());
    drop(conn);
    assert_no_reset(&client);
    assert_eq!(tracker.counts(), Counts::default());
}

/// A graceful trigger while draining may bring the deadline closer, never
/// push it back; the shortened deadline is enforced while a guard is held.
async fn graceful_only_shortens_deadline() {
    let shutdown = Shutdown::new();
    assert_eq!(shutdown.phase(), Phase::Running);
    assert_eq!(shutdown.deadline(), None);
    let guard = shutdown.guard();

    let first = shutdown
        .graceful(Duration::from_secs(60))
        .expect("deadline");
    assert_eq!(shutdown.phase(), Phase::Draining { deadline: first });
    assert!(shutdown.is_draining() && !shutdown.is_stopped());
    within("draining", shutdown.draining()).await;

    assert_eq!(shutdown.graceful(Duration::from_secs(600)), Some(first));
    assert_eq!(shutdown.deadline(), Some(first));

    let start = Instant::now();
    let short = Duration::from_millis(300);
    let second = shutdown.graceful(short).expect("deadline");
    assert!(second < first);
    assert_eq!(shutdown.deadline(), Some(second));
    assert_eq!(shutdown.graceful(Duration::from_secs(60)), Some(second));
    assert_eq!(shutdown.phase(), Phase::Draining { deadline: second });

    // The guard is still held: only the (shortened) deadline ends the drain.
    within("stopped", shutdown.stopped()).await;
    assert!(Instant::now() >= second);
    assert!(start.elapsed() < short + SLACK);
    assert_eq!(shutdown.phase(), Phase::Stopped);
    assert_eq!(shutdown.graceful(Duration::from_secs(1)), None);
    assert_eq!(shutdown.phase(), Phase::Stopped);
    drop(guard);
}

/// `immediate()` goes from Running straight to Stopped, guards or not; a
/// graceful trigger without guards stops at once too.
async fn immediate_goes_straight_to_stopped() {
    let shutdown = Shutdown::new();
    let guard = shutdown.guard();
    shutdown.immediate();
    assert_eq!(shutdown.phase(), Phase::Stopped);
    assert!(shutdown.is_draining() && shutdown.is_stopped());
    within("draining", shutdown.draining()).await;
    within("stopped", shutdown.stopped()).await;
    assert_eq!(shutdown.graceful(Duration::from_secs(60)), None);
    assert_eq!(shutdown.phase(), Phase::Stopped);
    drop(guard);

    // Immediate while draining.
    let shutdown = Shutdown::new();
    let guard = shutdown.guard();
    shutdown.graceful(Duration::from_secs(60));
    shutdown.immediate();
    assert_eq!(shutdown.phase(), Phase::Stopped);
    within("stopped", shutdown.stopped()).await;
    drop(guard);

    // Nothing to wait for: graceful stops at once.
    let shutdown = Shutdown::new();
    shutdown.graceful(Duration::from_secs(60));
    assert_eq!(shutdown.phase(), Phase::Stopped);
    within("stopped", shutdown.stopped()).await;
}

/// `close()` is a lingering close: the peer gets the whole response and
/// EOF, bytes it sends afterwards are swallowed (no RST), and the close ends
/// at the peer's FIN.
async fn close_is_a_lingering_close() {
    let linger = Duration::from_secs(10);
    let Server {
        tracker,
        mut listener,
        addr,
        ..
    } = server(config().linger(linger));
    let server = async {
        let mut conn = accept_one(&mut listener).await;
        let mut buf = [0; 6];
        conn.read_exact(&mut buf).await.expect("request");
        conn.write_all(b"bye\n").await.expect("response");
        let start = Instant::now();
        conn.close().await.expect("close");
        let took = start.elapsed();
        assert_eq!(conn.read(&mut buf).await.expect("read after close"), 0);
        drop(conn);
        took
    };
    let client = async {
        let mut client = connect(addr).await;
        client.write_all(b"hello\n").await.expect("send");
        expect_reply(&mut client, "bye\n").await;
        let mut buf = [0; 8];
        assert_eq!(within("FIN", client.read(&mut buf)).await.expect("EOF"), 0);
        client.write_all(b"late\n").await.expect("write after FIN");
        wait_counts(&tracker, "closing", |c| c.closing == 1).await;
        client
            .get_ref()
            .shutdown(std::net::Shutdown::Write)
            .expect("our FIN");
        client
    };
    let (took, client) = within("scenario", future::zip(server, client)).await;
    assert!(
        took < linger / 2,
        "lingered {took:?}: the peer's FIN should end it"
    );
    assert_no_reset(&client);
    assert_eq!(tracker.counts(), Counts::default());
}

/// Read ahead: two requests in one segment, the second in flight when the
/// drain starts. The `BufReader` reads both in one read of the transport and
/// serves the second from its buffer: the connection stays busy (no read of
/// the transport happens meanwhile), the second is answered, and then the
/// connection is closed cleanly.
async fn read_ahead_request_in_flight_completes() {
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(config().idle_grace(Duration::ZERO));
    let (release, released) = channel::bounded(1);
    let client = async {
        let mut client = connect(addr).await;
        client.write_all(b"first\nhold 2\n").await.expect("send");
        expect_reply(&mut client, "first\n").await;
        wait_exact(&tracker, counts(0, 1, 0, 0)).await;
        shutdown.graceful(DEADLINE);
        // An observation window: the drain must leave it alone.
        Timer::after(GRACE).await;
        assert_eq!(tracker.counts(), counts(0, 1, 0, 0));
        release.send(()).await.expect("release");
        expect_reply(&mut client, "hold 2\n").await;
        expect_eof(&mut client).await;
        within("stopped", shutdown.stopped()).await;
        client
    };
    let (served, client) = within(
        "scenario",
        future::zip(serve(&mut listener, Some(released)), client),
    )
    .await;
    assert_eq!(served, [2]);
    assert_no_reset(&client);
}

/// `TrackedListener::close` stops accepting at once, draining or not; and
/// `Tracked::into_inner` lets a connection leave untracked and untouched:
/// no count, no discard of what is queued, even while draining.
async fn listener_close_and_detach() {
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(config());
    let mut client = connect(addr).await;
    let accepted: Accepted<Async<TcpListener>> = within("accept", listener.accept())
        .await
        .expect("accept")
        .expect("not draining");
    let (conn, _peer) = accepted;
    assert_eq!(conn.shutdown().phase(), Phase::Running);
    listener.close();
    assert!(listener.get_ref().is_none());
    assert!(listener.accept().await.expect("accept").is_none());
    let refused = TcpStream::connect(addr).expect_err("the listener is closed");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);

    client.write_all(b"queued\n").await.expect("send");
    shutdown.graceful(DEADLINE);
    wait_exact(&tracker, counts(1, 0, 0, 0)).await;
    let mut raw = conn.into_inner();
    assert_eq!(tracker.counts(), Counts::default());
    let mut buf = [0; 7];
    within("queued bytes", raw.read_exact(&mut buf))
        .await
        .expect("read");
    assert_eq!(&buf, b"queued\n");
    within("stopped", shutdown.stopped()).await;
}

/// async-net's listener (smol's `net`) converts into `Arc<Async<_>>`, which
/// a tracker takes as it is; the drain closes it.
async fn async_net_listener_is_tracked() {
    let shutdown = Shutdown::new();
    let tracker = Tracker::with_config(&shutdown, config());
    let listener = smol::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let mut listener = tracker.listen(Arc::<Async<TcpListener>>::from(listener));
    let mut client = connect(addr).await;
    let (conn, peer) = within("accept", listener.accept())
        .await
        .expect("accept")
        .expect("not draining");
    assert_eq!(peer, client.get_ref().local_addr().expect("local_addr"));
    let client_side = async {
        ask(&mut client, "hi\n").await;
        shutdown.graceful(DEADLINE);
        expect_eof(&mut client).await;
    };
    let ((), served) = within("scenario", future::zip(client_side, echo(conn, None))).await;
    assert_eq!(served.expect("echo"), 1);
    assert!(listener.accept().await.expect("accept").is_none());
    let refused = TcpStream::connect(addr).expect_err("the listener is closed");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    within("stopped", shutdown.stopped()).await;

    // Unix sockets the same way.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lines.sock");
    let tracker = Tracker::new(&Shutdown::new());
    let listener = smol::net::unix::UnixListener::bind(&path).expect("bind");
    let mut listener = tracker.listen(Arc::<Async<UnixListener>>::from(listener));
    let _client = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    let (_conn, _peer) = within("accept", listener.accept())
        .await
        .expect("accept")
        .expect("not draining");
    assert_eq!(tracker.counts(), counts(1, 0, 0, 0));
}

/// Any stream of connections: `Incoming` over a stream that owns its
/// listener closes it at the drain; a stream that ends ends the accept loop.
async fn incoming_stream_is_tracked() {
    let shutdown = Shutdown::new();
    let tracker = Tracker::with_config(&shutdown, config());
    let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
    let addr = listener.get_ref().local_addr().expect("local_addr");
    let incoming = futures_lite::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    });
    let mut listener = tracker.listen(Incoming::new(incoming));
    let mut client = connect(addr).await;
    let (conn, ()) = within("accept", listener.accept())
        .await
        .expect("accept")
        .expect("not draining");
    let client_side = async {
        ask(&mut client, "hi\n").await;
        shutdown.graceful(DEADLINE);
        expect_eof(&mut client).await;
    };
    let ((), served) = within("scenario", future::zip(client_side, echo(conn, None))).await;
    assert_eq!(served.expect("echo"), 1);
    assert!(listener.accept().await.expect("accept").is_none());
    let refused = TcpStream::connect(addr).expect_err("the listener is closed");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);

    // A finite stream: its end is the accept loop's end.
    let tracker = Tracker::new(&Shutdown::new());
    let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let mut finite = tracker.listen(Incoming::new(futures_lite::stream::iter([Ok(a)])));
    assert!(finite.accept().await.expect("accept").is_some());
    assert!(finite.accept().await.expect("accept").is_none());
    assert!(finite.get_ref().is_none(), "an ended stream is dropped");
}

// ---------------------------------------------------------------------------
// (h) Every scenario under every executor.

macro_rules! executors {
    ($($scenario:ident),* $(,)?) => {
        mod futures_executor {
            $(#[test] fn $scenario() { futures::executor::block_on(super::$scenario()) })*
        }
        mod async_io_block_on {
            $(#[test] fn $scenario() { async_io::block_on(super::$scenario()) })*
        }
        mod smol_executor {
            $(#[test] fn $scenario() { smol::block_on(smol::spawn(super::$scenario())) })*
        }
    };
}

executors!(
    accept_ends_and_listener_closes,
    in_flight_request_completes,
    idle_connection_gets_eof,
    request_racing_the_drain_is_served,
    request_inside_idle_grace_is_served,
    steady_requests_cannot_hold_the_drain,
    close_lingering_ends_at_the_peers_fin,
    data_after_fin_is_not_reset,
    silent_connection_held_for_grace_only,
    request_within_grace_is_served,
    busy_past_deadline_is_force_closed,
    counts_follow_connection_states,
    manual_guard_holds_connection,
    automatic_guard_drop_ends_idle_connection,
    immediate_closes_everything_now,
    graceful_only_shortens_deadline,
    immediate_goes_straight_to_stopped,
    close_is_a_lingering_close,
    read_ahead_request_in_flight_completes,
    listener_close_and_detach,
    async_net_listener_is_tracked,
    incoming_stream_is_tracked,
);
