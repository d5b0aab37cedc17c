//! Drain scenarios through a real hyper connection: the server binary runs
//! as a real process, gets a real SIGTERM, and a raw TCP client on 127.0.0.1
//! sees exactly what went over the wire (a response, a clean EOF, a reset).
//!
//! These belong to the library's conformance suite (how `Tracked` drains a
//! stack that flushes eagerly and reads ahead), but live here because hyper
//! pulls in tokio's `sync`.
//!
//! Each scenario synchronises on the server's events (`--verbose
//! --events`: `accepted`, `request`, the first `draining` report), never on
//! a sleep. Timings are only asserted as lower bounds (a grace was honoured,
//! not cut short).

mod support;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use seamless_test_support::client::{
    assert_no_reset, expect_eof, read_response, send_get, Response,
};
use seamless_test_support::events::Counts;
use seamless_test_support::procs::{signal, wait_gone};
use support::{start, wait_event, wait_only_open, Event, Server, LONG};

/// Sends SIGTERM to `pid` and returns its first drain report's counts.
fn sigterm(server: &Server, pid: u32) -> Counts {
    signal(pid, Signal::TERM).expect("send SIGTERM");
    let report = wait_event(
        server,
        "a drain report",
        |e| matches!(e, Event::Draining { pid: p, .. } if *p == pid),
    );
    match report {
        Event::Draining { counts, .. } => counts,
        other => unreachable!("{other:?}"),
    }
}

/// The process exits, having drained `connections` with none left at the
/// deadline, and nothing holds its pipes any more.
fn assert_drained_and_gone(server: &Server, pid: u32, connections: usize) {
    if !wait_gone(pid, LONG) {
        server.fail(&format!("{pid} did not exit after SIGTERM"));
    }
    let summary = wait_event(
        server,
        "the drain summary",
        |e| matches!(e, Event::Drained { pid: p, .. } if *p == pid),
    );
    assert!(
        matches!(summary, Event::Drained { connections: n, left: 0, .. } if n == connections),
        "{summary:?}"
    );
    assert!(
        server.wait_pipes_closed(LONG),
        "a process still holds the server's stdout/stderr"
    );
    assert!(server.alive().is_empty(), "left: {:?}", server.alive());
}

/// A 200 `ok` from `pid`, with a content length, that says
/// `connection: close` exactly when `close`.
fn assert_ok(response: &Response, pid: u32, close: bool) {
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, b"ok\n", "{response:?}");
    assert_eq!(response.header("content-length"), Some("3"), "{response:?}");
    assert_eq!(
        response.header("x-generation"),
        Some(pid.to_string().as_str()),
        "{response:?}"
    );
    let says_close = response
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    assert_eq!(
        says_close, close,
        "connection: close expected {close}: {response:?}"
    );
}

/// Connects and waits until the server has accepted this connection and
/// closed every other (its readiness probes).
fn connect_alone(server: &Server, pid: u32) -> TcpStream {
    let client = seamless_test_support::client::connect(server.addr()).expect("connect");
    let me = client.local_addr().expect("local_addr");
    wait_only_open(server, pid, me);
    client
}

/// Sends `GET path` on a kept-alive connection.
fn get(client: &mut TcpStream, path: &str) {
    send_get(client, path, false).expect("send the request");
}

/// Waits until `pid`'s handler has the request for `target` from `peer`.
fn wait_request(server: &Server, pid: u32, peer: SocketAddr, target: &str) {
    wait_event(server, "the request in the handler", |e| {
        matches!(e, Event::Request { pid: p, peer: from, target: t, .. }
            if *p == pid && *from == peer && t == target)
    });
}

/// A request in flight when SIGTERM arrives is answered in full, with
/// `connection: close`, then the connection ends with a clean EOF.
///
/// hyper flushes with nothing buffered while the handler runs; a tracker
/// that took that flush for a response saw the connection go idle and
/// closed it under the request (the library's commit 53816ac fixed it).
#[test]
fn in_flight_request_spanning_sigterm_completes_with_connection_close() {
    let server = start("in-flight", &["--verbose"]);
    let pid = server.first_pid();
    let mut client = connect_alone(&server, pid);
    let me = client.local_addr().unwrap();
    get(&mut client, "/sleep?ms=5000");
    wait_request(&server, pid, me, "/sleep?ms=5000");

    let counts = sigterm(&server, pid);
    let response = read_response(&mut client).unwrap_or_else(|e| {
        server.fail(&format!(
            "the in-flight request was cut: {e}; drain report at SIGTERM {counts:?}"
        ))
    });
    assert_ok(&response, pid, true);
    assert_eq!(
        (counts.total, counts.busy),
        (1, 1),
        "the request is busy at the drain"
    );
    expect_eof(&mut client);
    assert_drained_and_gone(&server, pid, 1);
    assert_no_reset(&client);
}

/// An idle keep-alive connection is closed by seamless once the idle grace
/// is over: its pending read returns `Ok(0)` after our FIN, hyper takes it
/// for the client's close, and the client reads a clean EOF.
#[test]
fn idle_keepalive_connection_gets_clean_eof_after_idle_grace() {
    const IDLE_GRACE: Duration = Duration::from_millis(1000);
    let server = start("idle", &["--verbose", "--idle-grace-ms", "1000"]);
    let pid = server.first_pid();
    let mut client = connect_alone(&server, pid);
    let sent = Instant::now();
    get(&mut client, "/");
    let response = read_response(&mut client).expect("the first response");
    assert_ok(&response, pid, false);

    let counts = sigterm(&server, pid);
    assert_eq!((counts.total, counts.new), (1, 0));
    expect_eof(&mut client);
    let waited = sent.elapsed();
    // The grace counts from when the connection went idle, after our send.
    assert!(
        waited >= IDLE_GRACE,
        "closed {waited:?} after the request, inside the {IDLE_GRACE:?} idle grace"
    );
    assert_drained_and_gone(&server, pid, 1);
    assert_no_reset(&client);
}

/// A connection accepted before the drain whose request comes during it
/// (inside the first-byte grace) is served, with `connection: close`.
#[test]
fn new_connection_sending_within_first_byte_grace_is_served() {
    // Long, so the scenario never races it; the drain does not wait it out
    // once the request has come.
    let server = start(
        "first-byte",
        &["--verbose", "--first-byte-grace-ms", "15000"],
    );
    let pid = server.first_pid();
    let mut client = connect_alone(&server, pid);

    let counts = sigterm(&server, pid);
    assert_eq!(
        (counts.total, counts.new),
        (1, 1),
        "a new connection at the drain"
    );
    get(&mut client, "/");
    let response = read_response(&mut client)
        .unwrap_or_else(|e| server.fail(&format!("the late first request was lost: {e}")));
    assert_ok(&response, pid, true);
    expect_eof(&mut client);
    assert_drained_and_gone(&server, pid, 1);
    assert_no_reset(&client);
}

/// A connection that sends nothing is closed once the first-byte grace is
/// over, not before, and cleanly.
#[test]
fn silent_new_connection_closed_after_first_byte_grace() {
    const GRACE: Duration = Duration::from_millis(1000);
    let server = start("silent", &["--verbose", "--first-byte-grace-ms", "1000"]);
    let pid = server.first_pid();
    let mut client = connect_alone(&server, pid);

    let signalled = Instant::now();
    let counts = sigterm(&server, pid);
    assert_eq!(
        (counts.total, counts.new),
        (1, 1),
        "a new connection at the drain"
    );
    expect_eof(&mut client);
    let waited = signalled.elapsed();
    assert!(
        waited >= GRACE,
        "closed {waited:?} after SIGTERM, inside the {GRACE:?} first-byte grace"
    );
    assert_drained_and_gone(&server, pid, 1);
    assert_no_reset(&client);
}
