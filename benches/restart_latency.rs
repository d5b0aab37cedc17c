//! How much longer a hot restart takes to bring up a ready generation than
//! the same binary takes to start and bind on its own: SIGHUP to the new
//! generation's readiness, against a cold start to readiness, side by side.
//!
//! ```text
//! cargo bench --bench restart_latency
//! ```
//!
//! # How it measures
//!
//! The server is the `http` example (built here as `tests/restart.rs` does:
//! `cargo build --example http` with this bench's profile, whose settings
//! are release's). It logs `[pid] ready in N ms` on stderr right after
//! `Upgrader::ready()` returns: once it has told its parent (if it has one)
//! and written its pid file.
//! Every generation writes to the same stderr pipe; a thread here stamps
//! each line with `CLOCK_MONOTONIC` as it arrives.
//!
//! Rounds alternate (and alternate which goes first):
//!
//! - *cold*: start the binary (`--listen 127.0.0.1:0`, a pid file), and time
//!   the spawn to its ready line; then SIGTERM it and reap it.
//! - *sighup*: send SIGHUP to the serving generation of a long-lived server,
//!   and time the signal to the ready line of the new generation, which
//!   inherits the listening socket; then wait for the old generation to
//!   drain (it has no connection) and reap it. This process is a child
//!   subreaper, so every generation whose parent has exited is its child.
//!
//! Both include an `exec` of the same binary, its start-up and `ready()`;
//! the difference of the medians is what the hot restart adds: the signal's
//! delivery, the old generation's reaction and spawn, and the child's
//! inheriting instead of binding. Target: at most 2 ms.
//!
//! Output lines are `figure NAME VALUE UNIT`.

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitOptions};

const ROUNDS: usize = 41;
/// Generous bound for anything that should take milliseconds.
const LONG: Duration = Duration::from_secs(30);

fn main() {
    // Orphaned generations become our children, so we can reap them.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .expect("become a child subreaper");
    let http = common::http_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    // Should the bench fail half-way, no generation outlives it.
    let _leftovers = KillLeftovers;

    let mut server = Server::start(&http, &dir.path().join("hot.pid"));
    let mut current = server.first_pid;
    server.wait_ready(current);

    let (mut cold, mut sighup) = (vec![], vec![]);
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for hot in order {
            if hot {
                let (took, pid) = server.restart(current);
                current = pid;
                sighup.push(took);
            } else {
                cold.push(cold_start(&http, &dir.path().join("cold.pid")));
            }
        }
        eprintln!(
            "round {round}: cold start to ready {:.2} ms, SIGHUP to ready {:.2} ms",
            common::ms(cold[round]),
            common::ms(sighup[round])
        );
    }
    server.stop(current);

    let (cold_median, sighup_median) = (common::median(&cold), common::median(&sighup));
    let paired: Vec<f64> = cold
        .iter()
        .zip(&sighup)
        .map(|(c, s)| common::ms(*s) - common::ms(*c))
        .collect();
    for (name, values) in [("cold_start_to_ready", &cold), ("sighup_to_ready", &sighup)] {
        println!(
            "figure restart_{name}_median {:.3} ms (min {:.3}, max {:.3})",
            common::ms(common::median(values)),
            common::ms(common::min(values)),
            common::ms(common::max(values))
        );
    }
    println!(
        "figure restart_sighup_minus_cold_start {:.3} ms (difference of the medians; median of the round-by-round differences {:.3} ms)",
        common::ms(sighup_median) - common::ms(cold_median),
        common::median(&paired)
    );
}

/// A running `http` example: its generations' stderr lines, stamped.
struct Server {
    first_pid: u32,
    lines: Receiver<(String, u64)>,
    _child: Child,
}

impl Server {
    fn start(http: &Path, pid_file: &Path) -> Server {
        let mut child = Command::new(http)
            .args(["--listen", "127.0.0.1:0", "--pid-file"])
            .arg(pid_file)
            .args(["--ready-timeout-ms", "20000", "--drain-timeout-ms", "20000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the http example");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send((line, common::monotonic_ns()));
            }
        });
        running(child.id());
        Server {
            first_pid: child.id(),
            lines,
            _child: child,
        }
    }

    /// The next line from any generation: `(pid, message, arrival time)`.
    fn next_line(&self) -> (u32, String, u64) {
        loop {
            let (line, at) = self
                .lines
                .recv_timeout(LONG)
                .unwrap_or_else(|_| panic!("no word from the server within {LONG:?}"));
            let Some((pid, message)) = parse(&line) else {
                continue;
            };
            assert!(
                !message.starts_with("error") && !message.contains("upgrade failed"),
                "the server failed: {line}"
            );
            return (pid, message.to_owned(), at);
        }
    }

    /// Waits for `pid`'s ready line; returns its arrival time.
    fn wait_ready(&self, pid: u32) -> u64 {
        loop {
            let (from, message, at) = self.next_line();
            if from == pid && message.starts_with("ready in") {
                return at;
            }
        }
    }

    /// SIGHUP to `old`: the time to the new generation's ready line, and its
    /// pid. Returns once `old` has drained and been reaped.
    fn restart(&mut self, old: u32) -> (Duration, u32) {
        let sent = common::monotonic_ns();
        signal(old, Signal::HUP);
        let (mut ready, mut stopped) = (None, false);
        while ready.is_none() || !stopped {
            let (from, message, at) = self.next_line();
            if from != old && message.starts_with("ready in") {
                ready = Some((at, from));
            }
            stopped |= from == old && message == "stopped";
        }
        reap(old);
        let (at, new) = ready.unwrap();
        running(new);
        (Duration::from_nanos(at - sent), new)
    }

    /// SIGTERM to `pid`; returns once it has stopped and been reaped.
    fn stop(self, pid: u32) {
        signal(pid, Signal::TERM);
        loop {
            let (from, message, _) = self.next_line();
            if from == pid && message == "stopped" {
                break;
            }
        }
        reap(pid);
    }
}

/// Starts the binary on its own: the time from the spawn to its ready line.
fn cold_start(http: &Path, pid_file: &Path) -> Duration {
    let started = common::monotonic_ns();
    let server = Server::start(http, pid_file);
    let pid = server.first_pid;
    let ready = server.wait_ready(pid);
    server.stop(pid);
    Duration::from_nanos(ready - started)
}

/// `[pid] message` -> `(pid, message)`.
fn parse(line: &str) -> Option<(u32, &str)> {
    let (pid, rest) = line.strip_prefix('[')?.split_once("] ")?;
    Some((pid.parse().ok()?, rest))
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(pid as i32).expect("a positive pid")
}

fn signal(pid: u32, signal: Signal) {
    rustix::process::kill_process(pid_of(pid), signal)
        .unwrap_or_else(|e| panic!("signal {pid}: {e}"));
}

thread_local! {
    /// Generations started and not yet reaped.
    static RUNNING: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn running(pid: u32) {
    RUNNING.with(|running| running.borrow_mut().push(pid));
}

/// Kills and reaps, when dropped, every generation still running.
struct KillLeftovers;

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        for pid in RUNNING.with(|running| running.take()) {
            let _ = rustix::process::kill_process(pid_of(pid), Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid_of(pid)), WaitOptions::empty());
        }
    }
}

/// Reaps `pid`, our child (or orphan, as subreaper), once it has exited.
fn reap(pid: u32) {
    RUNNING.with(|running| running.borrow_mut().retain(|&p| p != pid));
    let status = rustix::process::waitpid(Some(pid_of(pid)), WaitOptions::empty())
        .unwrap_or_else(|e| panic!("waitpid {pid}: {e}"));
    assert!(
        status.is_some_and(|(_, s)| s.exit_status() == Some(0)),
        "{pid} exited with {status:?}"
    );
}
