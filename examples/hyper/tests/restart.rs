//! Hot restart under load, end to end, on the hyper server binary: the same
//! test as the library's `tests/restart.rs` (which drives the hand-written
//! `http` example), with the same load client.
//!
//! 32 clients (half keep-alive, half a new connection per request, one
//! request in 8 a 600 ms `/sleep`) run while the server is hot-restarted 10
//! times in a row with SIGHUP. No connection may be refused, no request may
//! fail or be cut (keep-alive race retries are counted and allowed), every
//! restart must bring a new pid, and no process or fd may be left behind.
//!
//! Run with `cargo test --release --test restart -- --nocapture` to see the
//! figures; set `SEAMLESS_TEST_LOG=1` to see the servers' own logs too.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::load;
use support::procs::{connection_fds, fd_count, poll, signal, wait_gone};
use support::{Server, LONG};

/// Hot restarts in a row under load.
const RESTARTS: usize = 10;

#[test]
fn hot_restarts_under_load_lose_nothing() {
    let server = Server::start("restart", &[]);
    let first = server.first_pid;
    // Measured once the probes' connections are closed.
    if poll(LONG, || (connection_fds(first) == 0).then_some(())).is_none() {
        server.fail("the probes' connections never closed");
    }
    let (fds_first, fds_inherited) = fd_count(first);
    assert!(fds_first > 0, "cannot read /proc/{first}/fd");

    let mut config = load::Config::new(server.addr);
    config.keepalive_clients = 16;
    config.fresh_clients = 16;
    config.sleep_one_in = 8;
    // Longer than the default idle grace (250 ms): a tracker that took
    // hyper's empty mid-request flush for a response would close these
    // under the request (it did: 240 of 297 cut before commit 53816ac).
    config.sleep_ms = 600;
    config.max_duration = Duration::from_secs(180);
    config.request_timeout = Duration::from_secs(10);
    let load = load::Load::start(config);
    if poll(LONG, || (load.completed() >= 200).then_some(())).is_none() {
        server.fail("the load never got going");
    }

    let mut generations = vec![first];
    let mut sighups = Vec::new();
    for restart in 1..=RESTARTS {
        let old = *generations.last().unwrap();
        assert_eq!(
            server.pid(),
            Some(old),
            "the pid file names the serving pid"
        );
        let sent_at = Instant::now();
        signal(old, Signal::HUP).expect("send a signal");
        sighups.push(sent_at);
        let new = server.wait_next_generation(old);
        let took = sent_at.elapsed();
        assert!(
            !generations.contains(&new),
            "restart {restart}: pid {new} was seen before"
        );
        generations.push(new);
        // The old generation has stopped accepting: its first drain report,
        // or its summary if it had no connection left. Until then it may
        // serve the whole load on a busy machine, and the next SIGHUP would
        // find a generation the load never reached.
        server.wait_line(old, "the old generation's drain", |t| {
            t.starts_with("draining: ") || t.starts_with("drained ")
        });
        // The load goes on through the new generation: each of the 32
        // clients gets at most one more answer from a draining generation
        // (with `connection: close`), so most of these 100 come from `new`.
        let before = load.completed();
        if poll(LONG, || (load.completed() >= before + 100).then_some(())).is_none() {
            server.fail(&format!("restart {restart}: the load stalled"));
        }
        eprintln!(
            "restart {restart:2}: {old} -> {new}, serving after {:.1} ms",
            took.as_secs_f64() * 1e3
        );
    }

    let summary = load.stop();
    let last = *generations.last().unwrap();
    let mut lingering = Vec::new();
    for &pid in &generations[..generations.len() - 1] {
        if !wait_gone(pid, LONG) {
            lingering.push(pid);
        }
    }
    // The last generation's fds, once the load's connections are closed.
    let fds_last = poll(LONG, || {
        let (n, _) = fd_count(last);
        (n == fds_first).then_some(n)
    })
    .unwrap_or_else(|| fd_count(last).0);
    let connections_last = connection_fds(last);

    signal(last, Signal::TERM).expect("send a signal");
    let last_gone = wait_gone(last, LONG);
    let pipes_closed = server.wait_pipes_closed(LONG);
    let left = server.alive();

    // /sleep requests that were in flight while a SIGHUP was sent.
    let spanning = summary
        .records
        .iter()
        .filter(|r| r.sleep && r.ok())
        .filter(|r| {
            let from = summary.started + r.start;
            let to = from + r.latency;
            sighups.iter().any(|t| from <= *t && *t <= to)
        })
        .count();
    eprintln!("{summary}");
    eprintln!(
        "restarts {RESTARTS}, generations {}, /sleep in flight across a SIGHUP {spanning}, \
         fds first {fds_first} (+{fds_inherited} inherited from the test's environment) \
         last {fds_last}",
        generations.len()
    );
    for record in summary.failures().take(20) {
        eprintln!("failed: {record:?}");
    }

    let log = server.log_tail(60);
    assert_eq!(
        summary.failed_with(load::FailKind::Refused),
        0,
        "refused connections\n{log}"
    );
    assert_eq!(
        summary.failed_total(),
        0,
        "failed requests: {}\n{log}",
        summary.failed_by_kind()
    );
    assert_eq!(summary.sent, summary.completed);
    assert!(summary.sleep_sent > 0);
    assert_eq!(
        summary.sleep_ok, summary.sleep_sent,
        "every /sleep gets a 200"
    );
    assert!(
        spanning > 0,
        "no /sleep request was in flight across a SIGHUP"
    );
    let distinct: BTreeSet<u32> = generations.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        RESTARTS + 1,
        "every restart changed the pid"
    );
    assert!(
        summary.generations.len() >= RESTARTS,
        "the load saw {} generations",
        summary.generations.len()
    );
    assert!(
        summary.generations.is_subset(&distinct),
        "answered by unknown generations: {:?}",
        summary.generations
    );
    assert!(
        lingering.is_empty(),
        "old generations still alive: {lingering:?}"
    );
    assert_eq!(
        fds_last, fds_first,
        "fds of the last generation vs the first ({connections_last} TCP connections open)"
    );
    assert!(last_gone, "the last generation did not exit after SIGTERM");
    assert!(
        pipes_closed,
        "a process still holds the server's stdout/stderr"
    );
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
