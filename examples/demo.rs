//! Hot restarts under load, then a graceful shutdown, measured.
//!
//! ```text
//! cargo run --release --example demo [-- --restarts N --seconds S --clients C --verbose]
//! ```
//!
//! Runs the HTTP server of `examples/common/http_server.rs` as a child
//! process (this same binary, re-executed with `--serve`), puts it under
//! continuous load (half keep-alive clients, half a new connection per
//! request, one request in 10 a 200 ms `/sleep`) for about `--seconds`
//! (default 10), and hot-restarts it `--restarts` times (default 5) with
//! SIGHUP. Each restart is shown as it happens: the new pid, how long until
//! it served (SIGHUP to the old generation saying its successor is ready, the
//! pid file naming it and it answering), and how many connections the old
//! generation drained.
//!
//! Then a table: requests sent, completed, failed by kind, keep-alive race
//! retries, latency steady vs around restarts, fds before and after. Last, a
//! graceful shutdown: SIGTERM with requests in flight and idle keep-alive
//! connections open; the in-flight requests must be answered, the idle
//! connections closed cleanly, the process must exit and no process may be
//! left.
//!
//! Exits non-zero if any request failed or anything was left behind.

#[path = "common/http_server.rs"]
mod http_server;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use seamless_test_support::load;
use seamless_test_support::procs::{alive, connection_fds, fd_count, poll, signal};

/// Bound for anything that should take milliseconds.
const LONG: Duration = Duration::from_secs(30);
/// Requests within this of a SIGHUP count as "around restarts".
const AROUND: Duration = Duration::from_secs(1);
/// Connections of each kind held across the final graceful shutdown.
const FINAL_CLIENTS: usize = 4;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--serve") {
        args.next();
        return match http_server::main_with_args(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("[{}] error: {e}", std::process::id());
                ExitCode::FAILURE
            }
        };
    }
    let settings = match Settings::parse(args) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match demo(&settings) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Settings {
    restarts: usize,
    seconds: f64,
    clients: usize,
    /// One request in this many is `/sleep?ms=200`; 0 for none.
    sleep_one_in: u64,
    /// Passed to the server; `None` keeps the library's default.
    idle_grace_ms: Option<u64>,
    verbose: bool,
}

impl Settings {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Settings, String> {
        let usage = "usage: demo [--restarts N] [--seconds S] [--clients C] \
                     [--sleep-one-in N] [--idle-grace-ms MS] [--verbose]";
        let mut settings = Settings {
            restarts: 5,
            seconds: 10.0,
            clients: 32,
            sleep_one_in: 10,
            idle_grace_ms: None,
            verbose: false,
        };
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| format!("{name} needs a value\n{usage}"))
            };
            let bad = |name: &str, v: &str| format!("{name}: bad value {v:?}\n{usage}");
            match arg.as_str() {
                "--restarts" => {
                    let v = value("--restarts")?;
                    settings.restarts = v.parse().map_err(|_| bad("--restarts", &v))?;
                }
                "--seconds" => {
                    let v = value("--seconds")?;
                    settings.seconds = v
                        .parse::<f64>()
                        .ok()
                        .filter(|s| *s > 0.0 && *s <= 3600.0)
                        .ok_or_else(|| bad("--seconds", &v))?;
                }
                "--clients" => {
                    let v = value("--clients")?;
                    settings.clients = v
                        .parse::<usize>()
                        .ok()
                        .filter(|c| (2..=1000).contains(c))
                        .ok_or_else(|| bad("--clients", &v))?;
                }
                "--sleep-one-in" => {
                    let v = value("--sleep-one-in")?;
                    settings.sleep_one_in = v.parse().map_err(|_| bad("--sleep-one-in", &v))?;
                }
                "--idle-grace-ms" => {
                    let v = value("--idle-grace-ms")?;
                    let ms = v.parse().map_err(|_| bad("--idle-grace-ms", &v))?;
                    settings.idle_grace_ms = Some(ms);
                }
                "--verbose" | "-v" => settings.verbose = true,
                _ => return Err(format!("unknown argument {arg:?}\n{usage}")),
            }
        }
        Ok(settings)
    }
}

/// A line a generation wrote on stderr, or the end of them all.
enum ServerEvent {
    Line { pid: u32, text: String },
    Closed,
}

/// The server's generations, seen through their stderr and the pid file.
struct Server {
    addr: SocketAddr,
    pid_file: PathBuf,
    events: Receiver<ServerEvent>,
    verbose: bool,
    /// Every pid that logged.
    pids: BTreeSet<u32>,
    /// Old pid -> new pid, from "generation N is ready; draining".
    upgraded: BTreeMap<u32, u32>,
    /// pid -> (connections, ms, left at the deadline), from "drained ...".
    drained: BTreeMap<u32, (usize, u64, usize)>,
    /// pid -> the first "draining: ..." report.
    first_report: BTreeMap<u32, String>,
    /// pid -> why an upgrade it started failed.
    upgrade_failed: BTreeMap<u32, String>,
    /// Every process holding the server's stderr has exited.
    closed: bool,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(verbose: bool, idle_grace_ms: Option<u64>) -> io::Result<(Server, u32)> {
        let dir = tempfile::tempdir()?;
        let pid_file = dir.path().join("http.pid");
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["--serve", "--listen", "127.0.0.1:0", "--pid-file"])
            .arg(&pid_file)
            .args(["--ready-timeout-ms", "10000", "--drain-timeout-ms", "10000"]);
        if let Some(ms) = idle_grace_ms {
            command.args(["--idle-grace-ms", &ms.to_string()]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let first = child.id();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let stderr = child.stderr.take().expect("piped");
        // Reaped by pid (see `alive`), like the generations after it.
        drop(child);

        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let parsed = line
                    .strip_prefix('[')
                    .and_then(|rest| rest.split_once("] "))
                    .and_then(|(pid, text)| Some((pid.parse().ok()?, text.to_owned())));
                let event = match parsed {
                    Some((pid, text)) => ServerEvent::Line { pid, text },
                    None => ServerEvent::Line { pid: 0, text: line },
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
            let _ = tx.send(ServerEvent::Closed);
        });
        // Only the first line matters; later generations print theirs too.
        let mut first_line = String::new();
        stdout.read_line(&mut first_line)?;
        std::thread::spawn(move || io::copy(&mut stdout, &mut io::sink()));
        let addr = first_line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(|| io::Error::other(format!("server said {first_line:?}")))?;
        let server = Server {
            addr,
            pid_file,
            events,
            verbose,
            pids: BTreeSet::from([first]),
            upgraded: BTreeMap::new(),
            drained: BTreeMap::new(),
            first_report: BTreeMap::new(),
            upgrade_failed: BTreeMap::new(),
            closed: false,
            _dir: dir,
        };
        Ok((server, first))
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Takes in server lines until `done` says so or `timeout` passes.
    fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Self) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = done(self) {
                return Some(value);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(ServerEvent::Line { pid, text }) => self.take(pid, text),
                Ok(ServerEvent::Closed) | Err(RecvTimeoutError::Disconnected) => {
                    self.closed = true;
                    return done(self);
                }
                Err(RecvTimeoutError::Timeout) => return None,
            }
        }
    }

    /// Takes in the lines already there.
    fn catch_up(&mut self) {
        self.wait_for(Duration::ZERO, |_| None::<()>);
    }

    fn take(&mut self, pid: u32, text: String) {
        if pid != 0 {
            self.pids.insert(pid);
        }
        let mut shown = self.verbose;
        if let Some(rest) = text.strip_prefix("generation ") {
            if let Some(new) = rest.strip_suffix(" is ready; draining") {
                if let Ok(new) = new.parse() {
                    self.upgraded.insert(pid, new);
                }
            }
        } else if let Some(rest) = text.strip_prefix("drained ") {
            let numbers: Vec<u64> = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            if let [connections, ms, left, ..] = numbers[..] {
                self.drained
                    .insert(pid, (connections as usize, ms, left as usize));
            }
        } else if text.starts_with("draining: ") {
            self.first_report.entry(pid).or_insert_with(|| text.clone());
        } else if let Some(why) = text.strip_prefix("upgrade failed") {
            self.upgrade_failed.insert(pid, why.to_owned());
            shown = true;
        } else if text.contains("error") || text.starts_with("accept:") {
            shown = true;
        }
        if shown {
            println!("    server [{pid}] {text}");
        }
    }

    /// Waits until `new` is named by the pid file and answers a request.
    fn wait_serving(&self, new: u32) -> bool {
        poll(LONG, || {
            (self.pid() == Some(new) && load::probe(self.addr, LONG).ok() == Some(new))
                .then_some(())
        })
        .is_some()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// One restart, as shown.
struct Restart {
    old: u32,
    new: u32,
    /// SIGHUP to serving.
    took: Duration,
}

fn demo(settings: &Settings) -> io::Result<bool> {
    // Generations whose parent generation has exited are re-parented to us,
    // so we can reap them and check that none is left.
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        println!("(could not become a child subreaper: {e}; zombies are not checked)");
    }
    let (mut server, first) = Server::start(settings.verbose, settings.idle_grace_ms)?;
    if !server.wait_serving(first) {
        return Err(io::Error::other("the server never became ready"));
    }
    poll(LONG, || (connection_fds(first) == 0).then_some(()));
    let (fds_before, fds_inherited) = fd_count(first);

    let keepalive = settings.clients / 2;
    let fresh = settings.clients - keepalive;
    println!(
        "seamless demo: HTTP server under load, {} hot restarts in {:.0} s, then a graceful shutdown",
        settings.restarts, settings.seconds
    );
    println!(
        "server: pid {first}, listening on {}, {fds_before} fds open",
        server.addr
    );
    println!(
        "load:   {} clients ({keepalive} keep-alive, {fresh} new connection per request), \
         1 request in 10 is /sleep?ms=200",
        settings.clients
    );
    println!();

    let mut config = load::Config::new(server.addr);
    config.keepalive_clients = keepalive;
    config.fresh_clients = fresh;
    config.sleep_one_in = settings.sleep_one_in;
    config.sleep_ms = 200;
    config.max_duration = Duration::from_secs_f64(settings.seconds) + Duration::from_secs(120);
    let started = Instant::now();
    let total = Duration::from_secs_f64(settings.seconds);
    let load = load::Load::start(config);

    let mut ok = true;
    let mut restarts: Vec<Restart> = Vec::new();
    let mut sighups: Vec<Instant> = Vec::new();
    let mut serving = first;
    for i in 1..=settings.restarts {
        let at = total.mul_f64(i as f64 / (settings.restarts + 1) as f64);
        std::thread::sleep(at.saturating_sub(started.elapsed()));
        server.catch_up();
        let old = serving;
        let sent_at = Instant::now();
        signal(old, Signal::HUP)?;
        sighups.push(sent_at);
        let outcome = server.wait_for(LONG, |s| {
            s.upgraded
                .get(&old)
                .map(|new| Ok(*new))
                .or_else(|| s.upgrade_failed.get(&old).map(|why| Err(why.clone())))
        });
        let new = match outcome {
            Some(Ok(new)) => new,
            Some(Err(why)) => {
                println!("restart {i}/{}: upgrade failed{why}", settings.restarts);
                ok = false;
                continue;
            }
            None => {
                println!(
                    "restart {i}/{}: no new generation within {LONG:?}",
                    settings.restarts
                );
                ok = false;
                break;
            }
        };
        if !server.wait_serving(new) {
            println!(
                "restart {i}/{}: generation {new} never answered",
                settings.restarts
            );
            ok = false;
            break;
        }
        let took = sent_at.elapsed();
        serving = new;
        // The old generation's drain report: it usually takes a few hundred
        // ms (the /sleep requests it still serves, then the clients' FINs).
        let drained = server.wait_for(Duration::from_secs(10), |s| s.drained.get(&old).copied());
        let drained = match drained {
            Some((n, ms, 0)) => format!("{old} drained {n} connections in {ms} ms"),
            Some((n, ms, left)) => {
                ok = false;
                format!("{old} drained {n} connections in {ms} ms, {left} CUT at the deadline")
            }
            None => format!("{old} still draining"),
        };
        println!(
            "restart {i}/{} at {:4.1} s: pid {old} -> {new}, serving after {}; {drained}",
            settings.restarts,
            (sent_at - started).as_secs_f64(),
            ms(took)
        );
        let _ = io::stdout().flush();
        restarts.push(Restart { old, new, took });
    }
    std::thread::sleep(total.saturating_sub(started.elapsed()));
    let summary = load.stop();

    // Old generations exit once drained.
    let mut lingering = Vec::new();
    for restart in &restarts {
        if poll(LONG, || (!alive(restart.old)).then_some(())).is_none() {
            lingering.push(restart.old);
        }
    }
    // The serving generation's fds once the load's connections are closed.
    let fds_after = poll(Duration::from_secs(10), || {
        let (n, _) = fd_count(serving);
        (n == fds_before && connection_fds(serving) == 0).then_some(n)
    })
    .unwrap_or_else(|| fd_count(serving).0);

    print_table(
        settings,
        &summary,
        &restarts,
        &sighups,
        fds_before,
        fds_after,
        fds_inherited,
    );
    if summary.failed_total() > 0 {
        ok = false;
        println!();
        println!("failed requests (first 10):");
        for record in summary.failures().take(10) {
            println!("  {record:?}");
        }
    }
    if !lingering.is_empty() {
        ok = false;
        println!("old generations still alive: {lingering:?}");
    }
    if fds_after != fds_before {
        ok = false;
        println!("fd count changed: {fds_before} before, {fds_after} after");
    }

    println!();
    ok &= graceful_shutdown(&mut server, serving)?;

    println!();
    if ok {
        println!("OK: no request failed, no connection refused, nothing left behind");
    } else {
        println!("FAILED (see above)");
    }
    Ok(ok)
}

fn print_table(
    settings: &Settings,
    summary: &load::Summary,
    restarts: &[Restart],
    sighups: &[Instant],
    fds_before: usize,
    fds_after: usize,
    fds_inherited: usize,
) {
    let near = |r: &load::Record| {
        let at = summary.started + r.start;
        sighups.iter().any(|t| {
            let gap = if at > *t { at - *t } else { *t - at };
            gap <= AROUND
        })
    };
    let steady = summary.latencies(|r| !r.sleep && !near(r));
    let around = summary.latencies(|r| !r.sleep && near(r));
    let sleep_steady = summary.latencies(|r| r.sleep && !near(r));
    let sleep_around = summary.latencies(|r| r.sleep && near(r));
    let took: Vec<Duration> = {
        let mut took: Vec<Duration> = restarts.iter().map(|r| r.took).collect();
        took.sort_unstable();
        took
    };
    let row = |name: &str, value: String| println!("  {name:<34} {value}");
    println!();
    println!(
        "results after {:.1} s of load ({} clients)",
        summary.elapsed.as_secs_f64(),
        settings.clients
    );
    row("requests sent", summary.sent.to_string());
    row(
        "completed (200, right generation)",
        summary.completed.to_string(),
    );
    row("failed", summary.failed_total().to_string());
    for kind in load::FailKind::ALL {
        let n = summary.failed_with(kind);
        if n > 0 {
            row(&format!("  {kind}"), n.to_string());
        }
    }
    row(
        "keep-alive race retries",
        format!(
            "{} (retried once on a new connection)",
            summary.retried_keepalive_race
        ),
    );
    row(
        "/sleep?ms=200 requests",
        format!(
            "{} sent, {} answered 200",
            summary.sleep_sent, summary.sleep_ok
        ),
    );
    row(
        "restarts done",
        format!("{} of {}", restarts.len(), settings.restarts),
    );
    row(
        "  SIGHUP to serving, median / max",
        format!(
            "{} / {}",
            load::millis(load::p50(&took)),
            load::millis(took.last().copied())
        ),
    );
    row(
        "generations that answered",
        summary.generations.len().to_string(),
    );
    if let Some(first) = restarts.first() {
        let chain: Vec<String> = std::iter::once(first.old)
            .chain(restarts.iter().map(|r| r.new))
            .map(|pid| pid.to_string())
            .collect();
        row("  pids", chain.join(" -> "));
    }
    println!();
    println!(
        "  {:<34} {:>22} {:>22}",
        "latency",
        "steady",
        format!("within ±{}s of a SIGHUP", AROUND.as_secs())
    );
    let line =
        |name: &str, a: &[Duration], b: &[Duration], p: fn(&[Duration]) -> Option<Duration>| {
            println!(
                "  {name:<34} {:>22} {:>22}",
                load::millis(p(a)),
                load::millis(p(b))
            )
        };
    println!(
        "  {:<34} {:>22} {:>22}",
        "  requests (GET /)",
        steady.len(),
        around.len()
    );
    line("  GET / p50", &steady, &around, load::p50);
    line("  GET / p99", &steady, &around, load::p99);
    line(
        "  /sleep?ms=200 p50",
        &sleep_steady,
        &sleep_around,
        load::p50,
    );
    line(
        "  /sleep?ms=200 p99",
        &sleep_steady,
        &sleep_around,
        load::p99,
    );
    println!();
    let inherited = if fds_inherited > 0 {
        format!(" (+{fds_inherited} inherited by the first generation from its launcher, not passed on)")
    } else {
        String::new()
    };
    row(
        "fds open, first / last generation",
        format!("{fds_before} / {fds_after}{inherited}"),
    );
}

/// How a client held across the shutdown ended.
#[derive(Debug, PartialEq)]
enum End {
    /// The in-flight request got a full 200 with `connection: close`, then EOF.
    Answered,
    /// An idle connection got a clean EOF.
    Eof,
    /// Something else.
    Bad(String),
}

/// Reads to EOF; a reset or a timeout is bad.
fn read_to_end(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    match stream.read_to_end(&mut data) {
        Ok(_) => match stream.take_error() {
            Ok(None) => Ok(data),
            Ok(Some(e)) | Err(e) => Err(format!("{e} after {} bytes", data.len())),
        },
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
            Err(format!("no EOF within the timeout ({} bytes)", data.len()))
        }
        Err(e) => Err(format!("{e} after {} bytes", data.len())),
    }
}

/// The old demo's ending: SIGTERM with requests in flight and idle
/// keep-alive connections, and what happened to each.
fn graceful_shutdown(server: &mut Server, pid: u32) -> io::Result<bool> {
    let connect = || -> io::Result<TcpStream> {
        let stream = TcpStream::connect_timeout(&server.addr, LONG)?;
        stream.set_read_timeout(Some(LONG))?;
        Ok(stream)
    };
    // Idle keep-alive connections: one request answered, then quiet.
    let mut idle = Vec::new();
    for _ in 0..FINAL_CLIENTS {
        let mut stream = connect()?;
        stream.write_all(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")?;
        let mut response = [0u8; 1024];
        let n = stream.read(&mut response)?;
        if !response[..n].ends_with(b"ok\n") {
            return Err(io::Error::other("unexpected answer before the shutdown"));
        }
        idle.push(stream);
    }
    // In flight: a 1 s request each, sent before the SIGTERM.
    let mut in_flight = Vec::new();
    for _ in 0..FINAL_CLIENTS {
        let mut stream = connect()?;
        stream.write_all(b"GET /sleep?ms=1000 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")?;
        in_flight.push(stream);
    }
    // Let the requests reach the server (pacing, not synchronisation: the
    // drain report below shows what the server saw).
    std::thread::sleep(Duration::from_millis(200));
    server.catch_up();
    let sent_at = Instant::now();
    println!(
        "graceful shutdown: SIGTERM to {pid} with {FINAL_CLIENTS} requests in flight \
         (/sleep?ms=1000) and {FINAL_CLIENTS} idle keep-alive connections"
    );
    signal(pid, Signal::TERM)?;
    let report = server.wait_for(LONG, |s| s.first_report.get(&pid).cloned());
    println!(
        "  {pid} {}",
        report.as_deref().unwrap_or("never reported its drain")
    );
    // A new connection now finds nobody listening.
    let late = match TcpStream::connect_timeout(&server.addr, Duration::from_secs(5)) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => "refused, as it should be".to_owned(),
        Err(e) => format!("failed: {e}"),
        Ok(_) => "accepted (the listener was still open)".to_owned(),
    };
    println!("  a new connection after the drain started: {late}");

    let mut ends = Vec::new();
    for mut stream in idle {
        ends.push(match read_to_end(&mut stream) {
            Ok(data) if data.is_empty() => End::Eof,
            Ok(data) => End::Bad(format!("{} unexpected bytes", data.len())),
            Err(e) => End::Bad(e),
        });
    }
    let idle_ok = ends.iter().filter(|e| **e == End::Eof).count();
    let mut answered = 0;
    for mut stream in in_flight {
        let end = match read_to_end(&mut stream) {
            Ok(data) => {
                let text = String::from_utf8_lossy(&data).to_ascii_lowercase();
                if text.starts_with("http/1.1 200")
                    && text.contains("connection: close")
                    && text.ends_with("ok\n")
                {
                    End::Answered
                } else {
                    End::Bad(format!("unexpected answer {text:?}"))
                }
            }
            Err(e) => End::Bad(e),
        };
        answered += usize::from(end == End::Answered);
        ends.push(end);
    }
    println!(
        "  in flight: {answered}/{FINAL_CLIENTS} answered 200 with `connection: close`, then EOF"
    );
    println!("  idle:      {idle_ok}/{FINAL_CLIENTS} closed cleanly (EOF, no reset)");
    for end in &ends {
        if let End::Bad(why) = end {
            println!("  client: {why}");
        }
    }

    let exited = poll(LONG, || (!alive(pid)).then_some(sent_at.elapsed()));
    let drained = server.wait_for(LONG, |s| s.drained.get(&pid).copied());
    // Every process holding the server's stderr is gone once it closes.
    let closed = server.wait_for(LONG, |s| s.closed.then_some(())).is_some();
    let left: Vec<u32> = server.pids.iter().copied().filter(|p| alive(*p)).collect();
    match exited {
        Some(took) => println!("  {pid} exited {} after SIGTERM", ms(took)),
        None => println!("  {pid} did NOT exit within {LONG:?}"),
    }
    if let Some((n, ms, left)) = drained {
        println!("  it drained {n} connections in {ms} ms ({left} left at the deadline)");
    }
    println!(
        "  processes left: {} of {} generations{}",
        left.len(),
        server.pids.len(),
        if closed {
            "; the server's stderr is closed"
        } else {
            "; the server's stderr is STILL OPEN"
        }
    );
    Ok(answered == FINAL_CLIENTS
        && idle_ok == FINAL_CLIENTS
        && exited.is_some()
        && closed
        && left.is_empty()
        && drained.is_some_and(|(_, _, left)| left == 0))
}
