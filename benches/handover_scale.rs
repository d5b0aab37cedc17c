//! How the live handoff scales with the number of idle connections: a hot
//! restart of the `http` example holding 1,000, 5,000 and 10,000 idle
//! keep-alive connections, with the handoff (the example's default) and,
//! side by side in the same run, with `--no-handover`, where the same
//! connections are closed instead.
//!
//! ```text
//! cargo bench --bench handover_scale
//! ```
//!
//! # How it measures
//!
//! Each sample starts a fresh `http` example (built as `restart_latency`
//! builds it; `--idle-grace-ms 0` so that neither kind waits out a grace,
//! and generous ready and drain timeouts) through the test support's
//! `Launch`, which follows its generations' `--events` lines. A helper
//! process (this binary re-run with `--clients`, as the client ends of
//! 10,000 connections do not fit beside anything else under the fd limit)
//! opens the connections in batches, sends `GET /` on each and reads the
//! answer, so every connection has served a request and waits, idle, for
//! the next.
//!
//! Then this process reads the old generation's CPU time (utime + stime
//! from `/proc/PID/stat`, every thread, in clock ticks: 10 ms on most
//! kernels), takes a `CLOCK_MONOTONIC` timestamp and sends SIGHUP. The
//! restart spawns the next generation, waits for it to be ready, and drains
//! the old one. Per sample we keep:
//!
//! - `sighup_to_drained`: from the signal to the old generation's `drained`
//!   event, which it writes once it holds no connection and (with the
//!   handoff) the new generation has acknowledged every one it was sent.
//!   It includes the new generation's start-up, the same for both kinds.
//! - `old_cpu`: the old generation's CPU time from just before the signal
//!   to that event (it then waits out its probation, idle, and is killed).
//!   `old_oncpu` is the same from each thread's `schedstat` (nanoseconds
//!   on a CPU), which resolves what ticks cannot at 1,000 connections; a
//!   thread that exits in between would drop out of it (the example has
//!   two, which stay).
//! - with `--no-handover`, `last_eof`: from the signal to the last EOF the
//!   helper sees (it closes each connection when it sees EOF, as a client
//!   does, which ends the server's lingering close).
//!
//! Every sample checks that the work was done: with the handoff, the
//! `drained` event counts every connection handed over and none fallen
//! back, and afterwards the helper sends one more request on each
//! connection, which the new generation must answer; with `--no-handover`
//! every connection sees a clean EOF.
//!
//! The helper sleeps in `epoll_wait` between events, so with
//! `--no-handover` each FIN the old generation sends on loopback also pays
//! for waking it (see `drain_idle`); with the handoff nothing reaches the
//! clients.
//!
//! Sizes and kinds alternate, in a different order each round. Output
//! lines: `figure NAME VALUE UNIT` (medians of `ROUNDS` samples, with min
//! and max) and `ratio NAME VALUE`: 10k over 1k and 5k over 1k for each
//! kind (linear work gives about 10 and 5), and handover over close for
//! each size.

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use async_io::Async;
use futures_lite::future;
use rustix::process::Signal;
use seamless_test_support::client;
use seamless_test_support::events::Event;
use seamless_test_support::procs::signal;
use seamless_test_support::server::Launch;

const SIZES: [usize; 3] = [1_000, 5_000, 10_000];
const ROUNDS: usize = 5;
/// Connections the helper opens before it makes sure they were accepted:
/// well under the listener's backlog.
const BATCH: usize = 64;
/// Bound for anything that should take seconds at most.
const LONG: Duration = Duration::from_secs(120);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--clients") => clients(
            args[2].parse().unwrap(),
            args[3].parse().unwrap(),
            args[4] == "close",
        ),
        _ => bench(&args[0]),
    }
}

/// What the old generation does with its idle connections.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Hands them to the next generation (the example's default).
    Handover,
    /// Closes them (`--no-handover`).
    Close,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Handover => "handover",
            Kind::Close => "close",
        }
    }
}

#[derive(Clone, Copy)]
struct Sample {
    drained: Duration,
    cpu: Duration,
    oncpu: Duration,
    /// `--no-handover` only.
    last_eof: Option<Duration>,
}

type Pick = fn(&Sample) -> Option<Duration>;

fn bench(exe: &str) {
    // The server's generations inherit the limit: each holds every
    // connection, the old one with its in-flight duplicates too.
    common::raise_fd_limit(SIZES[SIZES.len() - 1]);
    let http = common::http_binary();
    // [size][kind]
    let mut samples: [[Vec<Sample>; 2]; SIZES.len()] = Default::default();
    let mut order: Vec<(usize, Kind)> = (0..SIZES.len())
        .flat_map(|size| [(size, Kind::Handover), (size, Kind::Close)])
        .collect();
    for round in 0..ROUNDS {
        order.rotate_left(1);
        for &(size, kind) in &order {
            let sample = run(exe, &http, kind, SIZES[size]);
            eprintln!(
                "round {round}: {:>6} connections, {:<8}: drained after {:6.1} ms, old generation CPU {:6.1} ms (on a CPU {:6.1} ms){}",
                SIZES[size],
                kind.name(),
                common::ms(sample.drained),
                common::ms(sample.cpu),
                common::ms(sample.oncpu),
                sample
                    .last_eof
                    .map(|d| format!(", last EOF after {:.1} ms", common::ms(d)))
                    .unwrap_or_default(),
            );
            samples[size][kind as usize].push(sample);
        }
    }

    let stats = |size: usize, kind: Kind, pick: Pick| {
        let values: Vec<Duration> = samples[size][kind as usize]
            .iter()
            .filter_map(pick)
            .collect();
        (!values.is_empty()).then(|| {
            (
                common::median(&values),
                common::min(&values),
                common::max(&values),
            )
        })
    };
    let picks: [(&str, Pick); 4] = [
        ("sighup_to_drained", |s| Some(s.drained)),
        ("old_cpu", |s| Some(s.cpu)),
        ("old_oncpu", |s| Some(s.oncpu)),
        ("last_eof", |s| s.last_eof),
    ];
    for (size, n) in SIZES.iter().enumerate() {
        for kind in [Kind::Handover, Kind::Close] {
            for (what, pick) in picks {
                let Some((median, min, max)) = stats(size, kind, pick) else {
                    continue;
                };
                println!(
                    "figure handover_scale_{}_{what}_{}k_conns {:.1} ms (min {:.1}, max {:.1})",
                    kind.name(),
                    n / 1000,
                    common::ms(median),
                    common::ms(min),
                    common::ms(max),
                );
            }
        }
    }
    let median = |size: usize, kind: Kind, pick: Pick| {
        stats(size, kind, pick).map(|(m, _, _)| m.as_secs_f64())
    };
    for (what, pick) in &picks[..3] {
        for kind in [Kind::Handover, Kind::Close] {
            for smaller in [1, 0] {
                let growth = median(SIZES.len() - 1, kind, *pick).unwrap()
                    / median(smaller, kind, *pick).unwrap();
                println!(
                    "ratio handover_scale_{}_{what}_{}k_over_{}k {growth:.2}",
                    kind.name(),
                    SIZES[SIZES.len() - 1] / 1000,
                    SIZES[smaller] / 1000,
                );
            }
            let growth = median(1, kind, *pick).unwrap() / median(0, kind, *pick).unwrap();
            println!(
                "ratio handover_scale_{}_{what}_{}k_over_{}k {growth:.2}",
                kind.name(),
                SIZES[1] / 1000,
                SIZES[0] / 1000,
            );
        }
        for (size, n) in SIZES.iter().enumerate() {
            let over = median(size, Kind::Handover, *pick).unwrap()
                / median(size, Kind::Close, *pick).unwrap();
            println!(
                "ratio handover_scale_{what}_handover_over_close_{}k_conns {over:.2}",
                n / 1000
            );
        }
    }
}

/// One restart with `n` idle connections, handled as `kind` says.
fn run(exe: &str, http: &Path, kind: Kind, n: usize) -> Sample {
    let mut args = vec![
        "--idle-grace-ms",
        "0",
        "--ready-timeout-ms",
        "60000",
        "--drain-timeout-ms",
        "60000",
    ];
    if kind == Kind::Close {
        args.push("--no-handover");
    }
    let server = Launch::new("http", http)
        .args(args)
        .start()
        .expect("start the http example");
    let old = server.first_pid();
    let mut helper = Helper::start(exe, server.addr(), n, kind);
    let served_by = helper.line("ready");
    assert_eq!(served_by, old.to_string(), "served by the first generation");

    let since = server.events_seen();
    let cpu_before = cpu_time(old);
    let oncpu_before = on_cpu(old);
    let sent = common::monotonic_ns();
    signal(old, Signal::HUP).expect("SIGHUP");
    let new = server
        .wait_upgrade(since, old, LONG)
        .unwrap_or_else(|e| server.fail(&e.to_string()));
    let drained = server.wait_event(
        since,
        LONG,
        |event| matches!(event, Event::Drained { pid, .. } if *pid == old),
    );
    let drained_at = common::monotonic_ns();
    let cpu = cpu_time(old).saturating_sub(cpu_before);
    let oncpu = on_cpu(old).saturating_sub(oncpu_before);
    // Its `connections` is what its first report saw open, which may be
    // fewer: by then some may have gone.
    let Some(Event::Drained {
        left,
        handed_over,
        fell_back,
        ..
    }) = drained
    else {
        server.fail("no `drained` event from the old generation");
    };
    assert_eq!((left, fell_back), (0, 0), "{drained:?}");

    let last_eof = match kind {
        Kind::Handover => {
            assert_eq!(handed_over, n as u64, "every connection handed over");
            helper.say("probe");
            let answered = helper.line("probed");
            assert_eq!(
                answered,
                format!("{new} {n}"),
                "the new generation answers on every connection"
            );
            None
        }
        Kind::Close => {
            assert_eq!(handed_over, 0);
            let last_eof = common::EofTally::check(&helper.line("eof"), n);
            Some(Duration::from_nanos(last_eof.saturating_sub(sent)))
        }
    };
    helper.finish();
    // Dropping the server kills every generation still running: the old
    // one waits out its probation, the new one holds the connections.
    drop(server);
    Sample {
        drained: Duration::from_nanos(drained_at - sent),
        cpu,
        oncpu,
        last_eof,
    }
}

/// The user and system CPU time of every thread of `pid`, so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // "pid (comm) state ppid ...": fields 14 and 15 (utime, stime) are the
    // 12th and 13th after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = rustix::param::clock_ticks_per_second();
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}

/// The time every thread of `pid` now running has spent on a CPU.
fn on_cpu(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    let ns = tasks
        .map(|task| {
            let path = task.expect("a task").path().join("schedstat");
            // "on-CPU ns, waiting ns, time slices"; a thread gone since the
            // listing counts nothing.
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    Duration::from_nanos(ns)
}

/// The helper process holding the client ends.
struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Helper {
    fn start(exe: &str, addr: SocketAddr, n: usize, kind: Kind) -> Helper {
        let mut child = Command::new(exe)
            .args(["--clients", &addr.to_string(), &n.to_string(), kind.name()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the client helper");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Helper {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    /// The rest of the helper's next line, which must start with `word`.
    fn line(&self, word: &str) -> String {
        let line = self
            .lines
            .recv_timeout(LONG)
            .unwrap_or_else(|_| panic!("no `{word}` from the client helper"));
        match line.split_once(' ') {
            Some((first, rest)) if first == word => rest.to_owned(),
            _ => panic!("expected `{word}` from the client helper, not {line:?}"),
        }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").expect("write to the client helper");
    }

    /// Closes its stdin, which ends it.
    fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("the client helper exits");
        assert!(status.success(), "the client helper failed: {status}");
    }
}

/// `--clients ADDR N close|handover`: opens `N` keep-alive connections,
/// sends `GET /` on each and reads the answer, says `ready PID` (the
/// generation that answered); then
///
/// - `close`: waits for EOF on every connection, closing each as it ends,
///   and says `eof LAST_EOF_NS EOFS ERRORS`;
/// - `handover`: waits for `probe` on stdin, sends `GET /` on every
///   connection again, and says `probed PID COUNT` if one generation
///   answered on all of them (`probed mixed ...` otherwise).
///
/// Then it waits for stdin to close.
fn clients(addr: SocketAddr, n: usize, close: bool) {
    common::raise_fd_limit(n);
    let mut conns: Vec<TcpStream> = Vec::with_capacity(n);
    let mut served_by = std::collections::BTreeSet::new();
    while conns.len() < n {
        let batch = BATCH.min(n - conns.len());
        let start = conns.len();
        for _ in 0..batch {
            conns.push(client::connect(addr).expect("connect"));
        }
        // Answered, so accepted: the next batch finds room in the backlog.
        served_by.extend(request_all(&mut conns[start..]));
    }
    let served_by: Vec<u32> = served_by.into_iter().collect();
    let [pid] = served_by[..] else {
        panic!("served by several generations: {served_by:?}");
    };
    let mut stdin = BufReader::new(std::io::stdin());
    if close {
        let tally = common::EofTally::default();
        let ex = smol::LocalExecutor::new();
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|conn| {
                let mut conn = Async::new(conn).expect("async");
                let tally = &tally;
                // Closed as soon as its EOF is seen, as a client does.
                ex.spawn(async move { tally.watch(&mut conn).await })
            })
            .collect();
        // Every read registered before we say we are ready.
        while ex.try_tick() {}
        say(&format!("ready {pid}"));
        let all = async {
            for task in tasks {
                task.await;
            }
        };
        let timeout = async {
            async_io::Timer::after(LONG).await;
        };
        smol::block_on(ex.run(future::or(all, timeout)));
        say(&tally.report());
    } else {
        say(&format!("ready {pid}"));
        let mut line = String::new();
        stdin.read_line(&mut line).expect("read stdin");
        assert_eq!(line.trim(), "probe", "unexpected word {line:?}");
        let answered: std::collections::BTreeSet<u32> = request_all(&mut conns);
        match answered.iter().collect::<Vec<_>>()[..] {
            [pid] => say(&format!("probed {pid} {}", conns.len())),
            _ => say(&format!("probed mixed {answered:?}")),
        }
    }
    let _ = stdin.read(&mut [0u8; 1]);
}

/// Sends `GET /` on every connection, then reads every answer; returns the
/// generations that answered.
fn request_all(conns: &mut [TcpStream]) -> std::collections::BTreeSet<u32> {
    for conn in conns.iter_mut() {
        client::send_get(conn, "/", false).expect("send a request");
    }
    conns
        .iter_mut()
        .map(|conn| {
            let response = client::read_response(conn).expect("an answer");
            assert_eq!(response.status, 200);
            assert!(!response.says_close(), "a keep-alive answer");
            response.generation().expect("x-generation")
        })
        .collect()
}

fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").unwrap();
    stdout.flush().unwrap();
}
