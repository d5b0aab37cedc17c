//! Hot restart under load, end to end, on the hyper server binary: the
//! library's restart-under-load scenario (`seamless_test_support::scenario`,
//! which its `tests/restart.rs` runs on the hand-written `http` example),
//! with the same load client.
//!
//! 32 clients (half keep-alive, half a new connection per request, one
//! request in 8 a 600 ms `/sleep`) run while the server is hot-restarted 10
//! times in a row with SIGHUP, then it gets a SIGTERM with requests in flight
//! and idle connections. No connection may be refused, no request may fail
//! or be cut (keep-alive race retries are counted and allowed), every restart
//! must bring a new pid, and no process or fd may be left behind.
//!
//! Run with `cargo test --release --test restart -- --nocapture` to see the
//! figures; set `SEAMLESS_TEST_LOG=1` to see the servers' own logs too.

mod support;

use seamless_test_support::scenario::{Progress, RestartUnderLoad};

/// Hot restarts in a row under load.
const RESTARTS: usize = 10;
/// Longer than the default idle grace (250 ms): a tracker that took hyper's
/// empty mid-request flush for a response would close these under the
/// request (it did: 240 of 297 cut before the library's commit 53816ac).
const SLEEP_MS: u64 = 600;
const _: () = assert!(SLEEP_MS > 250);

#[test]
fn hot_restarts_under_load_lose_nothing() {
    let mut scenario = RestartUnderLoad::new(support::launch("restart", &[]));
    scenario.restarts = RESTARTS;
    scenario.keepalive_clients = 16;
    scenario.fresh_clients = 16;
    scenario.sleep_one_in = 8;
    scenario.sleep_ms = SLEEP_MS;
    let report = scenario
        .run(&mut |progress| match progress {
            Progress::Restarted(r) => eprintln!(
                "restart {:2}: {} -> {}, serving after {:.1} ms",
                r.index,
                r.old,
                r.new,
                r.serving_after.as_secs_f64() * 1e3
            ),
            Progress::RestartFailed { index, why } => eprintln!("restart {index:2}: {why}"),
            _ => {}
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{report}");
    let summary = &report.load;
    for record in summary.failures().take(20) {
        eprintln!("failed: {record:?}");
    }

    report.assert_lost_nothing(RESTARTS);
}
