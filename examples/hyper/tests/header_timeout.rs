//! hyper's `header_read_timeout` is enforced: the server gives hyper a timer
//! (smol-hyper's `SmolTimer`), without which hyper ignores its default
//! timeout and a client that never finishes its request head holds the
//! connection for good.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::procs::{signal, wait_gone};
use support::{connect, expect_eof, Server, LONG};

#[test]
fn unfinished_request_head_is_closed_after_header_read_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(1500);
    let server = Server::start(
        "header-timeout",
        &["--verbose", "--header-read-timeout-ms", "1500"],
    );
    let pid = server.first_pid;
    // hyper starts the timer when it first waits for a head: after accept.
    let connecting = Instant::now();
    let mut client = connect(server.addr);
    let me = client.local_addr().expect("local_addr");
    server.wait_only_open(pid, me);

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
    let closed = format!("closed {me}: ");
    let reason = server.wait_line(pid, "the connection's end", |t| t.starts_with(&closed));
    assert!(reason.contains("timeout"), "{reason}");
    assert!(server.log_lines().iter().all(|l| !l.contains("draining")));

    signal(pid, Signal::TERM).expect("send SIGTERM");
    assert!(wait_gone(pid, LONG), "{pid} did not exit after SIGTERM");
}
