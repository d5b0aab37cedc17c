//! Hot restart under load, measured end to end on the `http` example binary.
//!
//! - `hot_restarts_under_load_lose_nothing`: 32 clients (half keep-alive,
//!   half a new connection per request, one request in 8 a 200 ms `/sleep`)
//!   run while the server is hot-restarted 10 times in a row. No connection
//!   may be refused, no request may fail or be cut (keep-alive race retries
//!   are counted and allowed), every restart must bring a new pid, and no
//!   process or fd may be left behind.
//! - `a_burst_of_sighups_ends_with_one_generation`: 20 SIGHUPs at once end
//!   with exactly one generation serving, and nothing left after SIGTERM.
//!
//! Run with `cargo test --test restart -- --nocapture` to see the figures;
//! set `SEAMLESS_TEST_LOG=1` to see the servers' own logs too.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use seamless_test_support::load;
use seamless_test_support::procs::{
    alive, become_subreaper, connection_fds, fd_count, pid_of, poll, signal, wait_gone,
};

/// Hot restarts in a row under load.
const RESTARTS: usize = 10;
/// SIGHUPs in the burst.
const BURST: usize = 20;
/// Generous bound for anything that should take milliseconds.
const LONG: Duration = Duration::from_secs(30);

/// The `http` example binary, built if need be.
///
/// `cargo test --test restart` does not build examples, and a binary left
/// from an earlier build may be stale, so cargo is always asked (a no-op
/// when it is up to date).
fn http_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/restart-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary in target/<profile>/deps");
        let binary = profile_dir
            .join("examples")
            .join(format!("http{}", std::env::consts::EXE_SUFFIX));
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let mut build = Command::new(env!("CARGO"));
        build
            .args([
                "build",
                "--quiet",
                "--example",
                "http",
                "--profile",
                &profile,
            ])
            .arg("--manifest-path")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        if let Some(target_dir) = profile_dir.parent() {
            build.arg("--target-dir").arg(target_dir);
        }
        match build.status() {
            Ok(status) if status.success() => {}
            outcome if binary.exists() => {
                eprintln!("building the http example failed ({outcome:?}); using the existing one")
            }
            outcome => panic!("building the http example failed: {outcome:?}"),
        }
        assert!(
            binary.exists(),
            "{} missing after the build",
            binary.display()
        );
        binary
    })
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A running `http` example and every generation it turns into.
struct Server {
    addr: SocketAddr,
    pid_file: PathBuf,
    first_pid: u32,
    /// Every line the generations wrote on stderr.
    log: Arc<Mutex<Vec<String>>>,
    /// Every pid that logged a line.
    pids: Arc<Mutex<BTreeSet<u32>>>,
    /// A message when stdout, then when stderr, reaches EOF: every process
    /// holding them has exited.
    closed: Receiver<&'static str>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(name: &str) -> Server {
        become_subreaper();
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join(format!("{name}.pid"));
        let mut child = Command::new(http_binary())
            .args(["--listen", "127.0.0.1:0", "--pid-file"])
            .arg(&pid_file)
            .args(["--ready-timeout-ms", "20000", "--drain-timeout-ms", "20000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the http example");
        let first_pid = child.id();
        // Reaped by `alive`, by pid: the `Child` is not waited on.
        let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        drop(child);

        let (closed_tx, closed) = mpsc::channel();
        let (line_tx, lines) = mpsc::channel();
        {
            let closed_tx = closed_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = line_tx.send(line);
                }
                let _ = closed_tx.send("stdout");
            });
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        let pids = Arc::new(Mutex::new(BTreeSet::from([first_pid])));
        {
            let (log, pids) = (log.clone(), pids.clone());
            let echo = std::env::var_os("SEAMLESS_TEST_LOG").is_some();
            let name = name.to_owned();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("{name}: {line}");
                    }
                    let pid = line
                        .strip_prefix('[')
                        .and_then(|rest| rest.split_once(']'))
                        .and_then(|(pid, _)| pid.parse::<u32>().ok());
                    pids.lock().unwrap().extend(pid);
                    log.lock().unwrap().push(line);
                }
                let _ = closed_tx.send("stderr");
            });
        }
        let mut server = Server {
            addr: "127.0.0.1:0".parse().unwrap(),
            pid_file,
            first_pid,
            log,
            pids,
            closed,
            _dir: dir,
        };
        let line = match lines.recv_timeout(LONG) {
            Ok(line) => line,
            Err(e) => server.fail(&format!("no `listening on` line from the server: {e}")),
        };
        server.addr = match line.strip_prefix("listening on ").map(str::parse) {
            Some(Ok(addr)) => addr,
            _ => server.fail(&format!("unexpected first line on stdout: {line:?}")),
        };
        // Ready: the pid file names it and it answers.
        if poll(LONG, || {
            (server.pid() == Some(first_pid)
                && load::probe(server.addr, LONG).ok() == Some(first_pid))
            .then_some(())
        })
        .is_none()
        {
            server.fail("the first generation never became ready");
        }
        server
    }

    /// The pid in the pid file.
    fn pid(&self) -> Option<u32> {
        read_pid(&self.pid_file)
    }

    fn pids_seen(&self) -> BTreeSet<u32> {
        self.pids.lock().unwrap().clone()
    }

    /// Waits until the pid file names a generation other than `old` and that
    /// generation answers. Returns its pid.
    fn wait_next_generation(&self, old: u32) -> u32 {
        let Some(new) = poll(LONG, || self.pid().filter(|pid| *pid != old)) else {
            self.fail(&format!("no new pid in the pid file after SIGHUP to {old}"));
        };
        let answered = poll(LONG, || {
            (load::probe(self.addr, LONG).ok() == Some(new)).then_some(())
        });
        if answered.is_none() {
            self.fail(&format!("generation {new} never answered"));
        }
        new
    }

    /// Waits until both stdout and stderr reach EOF: every process that
    /// inherited them has exited.
    fn wait_pipes_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.closed.recv_timeout(left) {
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return false,
            }
        }
        true
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.log.lock().unwrap();
        let from = log.len().saturating_sub(lines);
        log[from..].join("\n")
    }

    fn fail(&self, message: &str) -> ! {
        panic!(
            "{message}\n--- last server log lines ---\n{}",
            self.log_tail(60)
        );
    }
}

impl Drop for Server {
    /// After a failure, no generation may outlive the test.
    fn drop(&mut self) {
        for pid in self.pids_seen() {
            if alive(pid) {
                let _ = rustix::process::kill_process(pid_of(pid), Signal::KILL);
                wait_gone(pid, Duration::from_secs(5));
            }
        }
    }
}

#[test]
fn hot_restarts_under_load_lose_nothing() {
    let server = Server::start("restart");
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
    config.sleep_ms = 200;
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
        let before = load.completed();
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
        // The load goes on through the new generation.
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
    let left: Vec<u32> = server
        .pids_seen()
        .into_iter()
        .filter(|pid| alive(*pid))
        .collect();

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

#[test]
fn a_burst_of_sighups_ends_with_one_generation() {
    let server = Server::start("burst");
    let first = server.first_pid;
    for _ in 0..BURST {
        // The serving pid as it is now: a generation that became ready
        // during the burst gets the rest.
        let pid = server.pid().unwrap_or(first);
        let _ = rustix::process::kill_process(pid_of(pid), Signal::HUP);
    }

    // Settled: exactly one of the generations seen is alive, the pid file
    // names it and it answers, and that holds for 10 polls in a row.
    let mut stable = 0;
    let mut previous = None;
    let survivor = poll(Duration::from_secs(60), || {
        let alive_now: Vec<u32> = server
            .pids_seen()
            .into_iter()
            .filter(|pid| alive(*pid))
            .collect();
        let coherent = match alive_now[..] {
            [only] if server.pid() == Some(only) => {
                load::probe(server.addr, LONG).ok() == Some(only)
            }
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
}
