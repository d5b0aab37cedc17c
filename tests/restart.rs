//! Hot restart under load, measured end to end on the `http` example binary.
//!
//! - `hot_restarts_under_load_lose_nothing`: 32 clients (half keep-alive,
//!   half a new connection per request, one request in 8 a 600 ms `/sleep`,
//!   longer than the idle grace) run while the server is hot-restarted 10
//!   times in a row, then it gets a SIGTERM with requests in flight and idle
//!   connections. No connection may be refused, no request may fail or be
//!   cut (keep-alive race retries are counted and allowed), every restart
//!   must bring a new pid, and no process or fd may be left behind. The
//!   scenario is the test support's (`support/src/scenario.rs`), which the
//!   demo and the hyper package's restart test run too.
//! - `a_burst_of_sighups_ends_with_one_generation`: 20 SIGHUPs at once end
//!   with exactly one generation serving, and nothing left after SIGTERM.
//!
//! Both follow the server through its `--events` lines, never its log text.
//! Run with `cargo test --release --test restart -- --nocapture` to see the
//! figures; set `SEAMLESS_TEST_LOG=1` to see the servers' own logs too.

use std::path::PathBuf;
use std::time::Duration;

use rustix::process::Signal;
use seamless_test_support::build::example_binary;
use seamless_test_support::load::probe;
use seamless_test_support::procs::{alive, poll, signal, wait_gone};
use seamless_test_support::scenario::{Progress, RestartUnderLoad};
use seamless_test_support::server::{Launch, LONG};

/// Hot restarts in a row under load.
const RESTARTS: usize = 10;
/// SIGHUPs in the burst.
const BURST: usize = 20;
/// How long the load's `/sleep` requests take: longer than the library's
/// default idle grace (250 ms), so that a request the drain took for idle
/// would be cut when the grace ends, and fail.
const SLEEP_MS: u64 = 600;
const _: () = assert!(SLEEP_MS > 250);

fn http_binary() -> PathBuf {
    example_binary(env!("CARGO_MANIFEST_DIR"), "http")
}

fn launch(name: &str) -> Launch {
    Launch::new(name, http_binary()).args([
        "--ready-timeout-ms",
        "20000",
        "--drain-timeout-ms",
        "20000",
    ])
}

#[test]
fn hot_restarts_under_load_lose_nothing() {
    let mut scenario = RestartUnderLoad::new(launch("restart"));
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

#[test]
fn a_burst_of_sighups_ends_with_one_generation() {
    let server = launch("burst").start().unwrap_or_else(|e| panic!("{e}"));
    let first = server.first_pid();
    for _ in 0..BURST {
        // The serving pid as it is now: a generation that became ready
        // during the burst gets the rest.
        let pid = server.pid().unwrap_or(first);
        let _ = signal(pid, Signal::HUP);
    }

    // Settled: exactly one of the generations seen is alive, the pid file
    // names it and it answers, and that holds for 10 polls in a row.
    let mut stable = 0;
    let mut previous = None;
    let survivor = poll(Duration::from_secs(60), || {
        let alive_now = server.alive();
        let coherent = match alive_now[..] {
            [only] if server.pid() == Some(only) => probe(server.addr(), LONG).ok() == Some(only),
            _ => false,
        };
        let current = coherent.then(|| alive_now[0]);
        if current.is_some() && current == previous {
            stable += 1;
        } else {
            stable = 0;
        }
        previous = current;
        (stable >= 10).then_some(current).flatten()
    });
    let Some(survivor) = survivor else {
        server.fail("the burst never settled on one generation");
    };
    let seen = server.pids_seen();
    eprintln!(
        "burst of {BURST} SIGHUPs: {} generations in all, {survivor} serving",
        seen.len()
    );

    signal(survivor, Signal::TERM).expect("send a signal");
    assert!(
        wait_gone(survivor, LONG),
        "{survivor} did not exit after SIGTERM"
    );
    assert!(
        server.wait_pipes_closed(LONG),
        "a process still holds the server's stdout/stderr"
    );
    let left: Vec<u32> = server
        .pids_seen()
        .into_iter()
        .filter(|pid| alive(*pid))
        .collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(seen.len() >= 2, "the burst did not restart at all");
    assert_eq!(server.bad_lines(), Vec::<String>::new());
}
