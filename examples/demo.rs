//! Hot restarts under load, then a graceful shutdown, measured.
//!
//! ```text
//! cargo run --release --example demo [-- --restarts N --seconds S --clients C
//!     --sleep-one-in N --idle-grace-ms MS --no-handover --verbose]
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
//!
//! The scenario itself (and what it waits for at each step) is the test
//! support's `scenario` module (`support/src/scenario.rs`), which
//! `tests/restart.rs` runs too; this file shows its report. The server's
//! progress is read from its `--events` lines, never from its log text.

#[path = "common/http_server.rs"]
mod http_server;

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use seamless_test_support::args::CommandLine;
use seamless_test_support::load::{millis, p50, p99, FailKind, Record, Summary};
use seamless_test_support::scenario::{Progress, Report, RestartUnderLoad};
use seamless_test_support::server::Launch;

/// Requests within this of a SIGHUP count as "around restarts".
const AROUND: Duration = Duration::from_secs(1);
/// Connections of each kind held across the final graceful shutdown.
const FINAL_CLIENTS: usize = 4;
/// How long the load's `/sleep` requests take.
const SLEEP_MS: u64 = 200;

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
    /// Close idle connections at a restart instead of handing them over.
    no_handover: bool,
    verbose: bool,
}

impl Settings {
    fn parse(args: impl Iterator<Item = String>) -> io::Result<Settings> {
        let usage = "usage: demo [--restarts N] [--seconds S] [--clients C] \
                     [--sleep-one-in N] [--idle-grace-ms MS] [--no-handover] [--verbose]";
        let mut settings = Settings {
            restarts: 5,
            seconds: 10.0,
            clients: 32,
            sleep_one_in: 10,
            idle_grace_ms: None,
            no_handover: false,
            verbose: false,
        };
        let mut options = CommandLine::new(args, usage);
        while let Some(name) = options.next_name() {
            match name.as_str() {
                "--restarts" => settings.restarts = options.parsed()?,
                "--seconds" => {
                    settings.seconds = options.parsed()?;
                    if !(settings.seconds > 0.0 && settings.seconds <= 3600.0) {
                        return Err(options.error("--seconds: between 0 and 3600"));
                    }
                }
                "--clients" => {
                    settings.clients = options.parsed()?;
                    if !(2..=1000).contains(&settings.clients) {
                        return Err(options.error("--clients: between 2 and 1000"));
                    }
                }
                "--sleep-one-in" => settings.sleep_one_in = options.parsed()?,
                "--idle-grace-ms" => settings.idle_grace_ms = Some(options.parsed()?),
                "--no-handover" => settings.no_handover = options.flag()?,
                "--verbose" | "-v" => settings.verbose = options.flag()?,
                _ => return Err(options.unknown()),
            }
        }
        Ok(settings)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn demo(settings: &Settings) -> io::Result<bool> {
    let mut args = vec![
        "--serve",
        "--ready-timeout-ms",
        "10000",
        "--drain-timeout-ms",
        "10000",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    if let Some(ms) = settings.idle_grace_ms {
        args.extend(["--idle-grace-ms".into(), ms.to_string()]);
    }
    if settings.no_handover {
        args.push("--no-handover".into());
    }
    let mut launch = Launch::new("http", std::env::current_exe()?).args(args);
    if settings.verbose {
        launch = launch.echo("    server ");
    }
    let keepalive = settings.clients / 2;
    let fresh = settings.clients - keepalive;
    let mut scenario = RestartUnderLoad::new(launch);
    scenario.restarts = settings.restarts;
    scenario.keepalive_clients = keepalive;
    scenario.fresh_clients = fresh;
    scenario.sleep_one_in = settings.sleep_one_in;
    scenario.sleep_ms = SLEEP_MS;
    scenario.spread_over = Some(Duration::from_secs_f64(settings.seconds));
    // Each restart's line shows how its old generation's drain ended: it
    // usually takes a few hundred ms (the /sleep requests it still serves,
    // then the clients' FINs).
    scenario.wait_drained = Some(Duration::from_secs(10));
    scenario.final_in_flight = FINAL_CLIENTS;
    scenario.final_idle = FINAL_CLIENTS;
    scenario.final_sleep_ms = 1000;

    let restarts = settings.restarts;
    let report = scenario.run(&mut |progress| {
        match progress {
            Progress::Started { pid, addr, fds } => {
                println!(
                    "seamless demo: HTTP server under load, {restarts} hot restarts in {:.0} s, \
                     then a graceful shutdown",
                    settings.seconds
                );
                println!("server: pid {pid}, listening on {addr}, {fds} fds open");
                let sleeps = match settings.sleep_one_in {
                    0 => "no /sleep".to_owned(),
                    n => format!("1 request in {n} is /sleep?ms={SLEEP_MS}"),
                };
                println!(
                    "load:   {} clients ({keepalive} keep-alive, {fresh} new connection per request), \
                     {sleeps}",
                    settings.clients
                );
                println!();
            }
            Progress::Restarted(restart) => {
                let old = restart.old;
                let drained = match restart.drained {
                    Some(d) => {
                        let cut = match d.left {
                            0 => String::new(),
                            left => format!(", {left} CUT at the deadline"),
                        };
                        let fell_back = match d.fell_back {
                            0 => String::new(),
                            n => format!(", {n} fell back to a close"),
                        };
                        format!(
                            "{old} drained {} connections in {} ms ({} handed over alive{fell_back}){cut}",
                            d.connections, d.ms, d.handed_over
                        )
                    }
                    None => format!("{old} still draining"),
                };
                println!(
                    "restart {}/{restarts} at {:4.1} s: pid {old} -> {}, serving after {}; {drained}",
                    restart.index,
                    restart.at.as_secs_f64(),
                    restart.new,
                    ms(restart.serving_after)
                );
            }
            Progress::RestartFailed { index, why } => println!("restart {index}/{restarts}: {why}"),
            Progress::ShuttingDown { .. } => {}
        }
        let _ = io::stdout().flush();
    })?;

    print_table(settings, &report);
    if report.load.failed_total() > 0 {
        println!();
        println!("failed requests (first 10):");
        for record in report.load.failures().take(10) {
            println!("  {record:?}");
        }
    }
    if !report.lingering.is_empty() {
        println!("old generations still alive: {:?}", report.lingering);
    }
    if report.fds_last != report.fds_first {
        println!(
            "fd count changed: {} before, {} after",
            report.fds_first, report.fds_last
        );
    }
    println!();
    print_shutdown(&report);

    let problems = report.problems();
    println!();
    if problems.is_empty() {
        println!("OK: no request failed, no connection refused, nothing left behind");
    } else {
        println!("FAILED:");
        for problem in &problems {
            println!("  {problem}");
        }
        println!("--- last server log lines ---\n{}", report.log_tail);
    }
    Ok(problems.is_empty())
}

fn print_table(settings: &Settings, report: &Report) {
    let summary: &Summary = &report.load;
    let sighups: Vec<Instant> = report.restarts.iter().map(|r| r.sighup).collect();
    let near = |r: &Record| {
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
    let took = report.serving_after();
    let sleep = format!("/sleep?ms={}", report.sleep_ms);
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
    for kind in FailKind::ALL {
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
        "reconnects forced by restarts",
        format!(
            "{} (keep-alive clients' connections closed under them)",
            summary.reconnects
        ),
    );
    let handed: u64 = report
        .restarts
        .iter()
        .filter_map(|r| r.drained.map(|d| d.handed_over))
        .sum();
    row("connections handed over alive", handed.to_string());
    row(
        &format!("{sleep} requests"),
        format!(
            "{} sent, {} answered 200",
            summary.sleep_sent, summary.sleep_ok
        ),
    );
    row(
        "restarts done",
        format!("{} of {}", report.restarts.len(), report.restarts_asked),
    );
    row(
        "  SIGHUP to serving, median / max",
        format!("{} / {}", millis(p50(&took)), millis(took.last().copied())),
    );
    row(
        "generations that answered",
        summary.generations.len().to_string(),
    );
    if let Some(first) = report.restarts.first() {
        let chain: Vec<String> = std::iter::once(first.old)
            .chain(report.restarts.iter().map(|r| r.new))
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
            println!("  {name:<34} {:>22} {:>22}", millis(p(a)), millis(p(b)))
        };
    println!(
        "  {:<34} {:>22} {:>22}",
        "  requests (GET /)",
        steady.len(),
        around.len()
    );
    line("  GET / p50", &steady, &around, p50);
    line("  GET / p99", &steady, &around, p99);
    line(&format!("  {sleep} p50"), &sleep_steady, &sleep_around, p50);
    line(&format!("  {sleep} p99"), &sleep_steady, &sleep_around, p99);
    println!();
    let inherited = if report.fds_inherited > 0 {
        format!(
            " (+{} inherited by the first generation from its launcher, not passed on)",
            report.fds_inherited
        )
    } else {
        String::new()
    };
    row(
        "fds open, first / last generation",
        format!("{} / {}{inherited}", report.fds_first, report.fds_last),
    );
}

/// The final graceful shutdown: SIGTERM with requests in flight and idle
/// keep-alive connections, and what happened to each.
fn print_shutdown(report: &Report) {
    let end = &report.shutdown;
    let pid = end.pid;
    println!(
        "graceful shutdown: SIGTERM to {pid} with {} requests in flight \
         (/sleep?ms={}) and {} idle keep-alive connections",
        end.in_flight, end.sleep_ms, end.idle
    );
    match end.first_report {
        Some(counts) => println!("  {pid} draining: {counts}"),
        None => println!("  {pid} never reported its drain"),
    }
    println!(
        "  a new connection after the drain started: {}",
        end.late_connection
    );
    println!(
        "  in flight: {}/{} answered 200 with `connection: close`, then EOF",
        end.answered, end.in_flight
    );
    println!(
        "  idle:      {}/{} closed cleanly (EOF, no reset)",
        end.idle_closed, end.idle
    );
    for error in &end.client_errors {
        println!("  client: {error}");
    }
    match end.exited_after {
        Some(took) => println!("  {pid} exited {} after SIGTERM", ms(took)),
        None => println!("  {pid} did NOT exit after SIGTERM"),
    }
    if let Some(d) = end.drained {
        println!(
            "  it drained {} connections in {} ms ({} left at the deadline)",
            d.connections, d.ms, d.left
        );
    }
    println!(
        "  processes left: {} of {} generations{}",
        report.processes_left.len(),
        report.pids_seen.len(),
        if report.pipes_closed {
            "; the server's stdout and stderr are closed"
        } else {
            "; the server's stdout or stderr is STILL OPEN"
        }
    );
}
