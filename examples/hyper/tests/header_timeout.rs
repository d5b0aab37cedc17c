//! hyper's `header_read_timeout` is enforced: the server gives hyper a timer
//! (smol-hyper's `SmolTimer`), without which hyper ignores its default
//! timeout and a client that never finishes its request head holds the
//! connection for good.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use seamless_test_support::client::{connect, expect_eof};
use seamless_test_support::procs::{signal, wait_gone};
use support::{start, wait_event, wait_only_open, Event, LONG};

#[test]
fn unfinished_request_head_is_closed_after_header_read_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(1500);
    let server = start(
        "header-timeout",
        &["--verbose", "--header-read-timeout-ms", "1500"],
    );
    let pid = server.first_pid();
    // hyper starts the timer when it first waits for a head: after accept.
    let connecting = Instant::now();
    let mut client = connect(server.addr()).expect("connect");
    let me = client.local_addr().expect("local_addr");
    wait_only_open(&server, pid, me);

    client
        .write_all(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        .expect("send half a head");
    expect_eof(&mut client);
    let waited = connecting.elapsed();
    assert!(
        waited >= TIMEOUT,
        "closed {waited:?} after connecting, before hyper's {TIMEOUT:?} timeout"
    );
    // hyper, not a drain, closed it: the server is not draining.
    let closed = wait_event(
        &server,
        "the connection's end",
        |e| matches!(e, Event::Closed { pid: p, peer, .. } if *p == pid && *peer == me),
    );
    let Event::Closed { error, .. } = closed else {
        unreachable!()
    };
    assert!(
        error.as_deref().is_some_and(|e| e.contains("timeout")),
        "{error:?}"
    );
    assert!(
        server
            .events()
            .iter()
            .all(|e| !matches!(e, Event::Draining { .. } | Event::Stopping { .. })),
        "{:#?}",
        server.events()
    );

    signal(pid, Signal::TERM).expect("send SIGTERM");
    assert!(wait_gone(pid, LONG), "{pid} did not exit after SIGTERM");
}
