//! A small HTTP/1.1 server with graceful shutdown and hot restart, on smol.
//!
//! Shared by `examples/http.rs` (run it directly), `examples/demo.rs` (which
//! runs it as a child process) and `tests/restart.rs` (which drives the
//! `http` example binary).
//!
//! ```text
//! http [--listen ADDR] [--pid-file PATH] [--ready-timeout-ms N] [--drain-timeout-ms N]
//!      [--idle-grace-ms N] [--probation-ms N] [--no-handover] [--events]
//! ```
//!
//! - `GET /` answers `200 ok`; `GET /sleep?ms=N` answers `200 ok` after N ms;
//!   anything else is a 404 (405 for methods other than GET and HEAD).
//! - Every response has `content-length`, `x-generation: <pid>` (the pid of
//!   the process that served it) and `x-target: <target>` (the request's).
//! - Keep-alive by default (HTTP/1.1). At a hot restart, idle keep-alive
//!   connections move, alive, to the next generation (unless
//!   `--no-handover`). A response written while this process is draining
//!   says `connection: close` if the connection will really close, and the
//!   connection is then closed cleanly, so a well-behaved client never races
//!   the close.
//! - `GET /decline` keeps the connection from moving to the next generation;
//!   `GET /state?set=TEXT` sets the state that moves with it, and every
//!   response then says `x-state: TEXT`, in the next generation too.
//! - SIGHUP (or SIGUSR2) starts the next generation, which inherits the
//!   listening socket (so `--listen 127.0.0.1:0` keeps its port across
//!   restarts); SIGTERM (or SIGINT) drains; a second SIGTERM stops at once.
//!
//! On stdout it prints `listening on ADDR` once bound. On stderr it logs one
//! line per event for people, each starting with `[pid]`. With `--events` it
//! also writes one machine-readable line per event there, for the test
//! harness: `event=upgraded pid=4687 child=4693` and the like, in the format
//! of `seamless_test_support::events` (`support/src/events.rs`). Only those
//! are meant to be parsed.
#![allow(dead_code)]

use std::io::{self, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use seamless::conn::Counts;
use seamless::handoff::{HandoverStats, Options, Upgrader};
use seamless::signals::{self, SignalHandler};
use seamless::{Shutdown, Tracked, Tracker};
use seamless_test_support::args::CommandLine;
use seamless_test_support::events::{self, Event};

/// Largest request head accepted; a bigger one gets 431 and a close.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in a request; more gets 431 and a close.
const MAX_HEADERS: usize = 64;
/// Longest `/sleep` accepted.
const MAX_SLEEP_MS: u64 = 60_000;
/// How often drain progress is reported.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// Command-line settings.
#[derive(Debug, Clone)]
pub struct Args {
    /// Where to listen if no listener is inherited.
    pub listen: String,
    /// Where each generation writes its pid once ready.
    pub pid_file: Option<PathBuf>,
    /// How long the next generation has to become ready.
    pub ready_timeout: Duration,
    /// The drain deadline, after an upgrade or on SIGTERM.
    pub drain_timeout: Duration,
    /// How long an idle keep-alive connection is given at drain for a next
    /// request already on the wire (`None`: the library's default).
    pub idle_grace: Option<Duration>,
    /// How long a new generation is watched after it is ready (`None`:
    /// the library's default).
    pub probation: Option<Duration>,
    /// Close idle connections at a drain instead of handing them, alive,
    /// to the next generation.
    pub no_handover: bool,
    /// Write machine-readable event lines on stderr too.
    pub events: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            listen: "127.0.0.1:8080".into(),
            pid_file: None,
            ready_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            idle_grace: None,
            probation: None,
            no_handover: false,
            events: false,
        }
    }
}

const USAGE: &str = "usage: http [--listen ADDR] [--pid-file PATH] \
                     [--ready-timeout-ms N] [--drain-timeout-ms N] [--idle-grace-ms N] \
                     [--probation-ms N] [--no-handover] [--events]";

/// Parses the options (without the program name).
pub fn parse_args(args: impl Iterator<Item = String>) -> io::Result<Args> {
    let mut parsed = Args::default();
    let mut options = CommandLine::new(args, USAGE);
    while let Some(name) = options.next_name() {
        match name.as_str() {
            "--listen" => parsed.listen = options.value()?,
            "--pid-file" => parsed.pid_file = Some(options.value()?.into()),
            "--ready-timeout-ms" => parsed.ready_timeout = options.millis()?,
            "--drain-timeout-ms" => parsed.drain_timeout = options.millis()?,
            "--idle-grace-ms" => parsed.idle_grace = Some(options.millis()?),
            "--probation-ms" => parsed.probation = Some(options.millis()?),
            "--no-handover" => parsed.no_handover = options.flag()?,
            "--events" => parsed.events = options.flag()?,
            "-h" | "--help" => return Err(options.error("help")),
            _ => return Err(options.unknown()),
        }
    }
    Ok(parsed)
}

/// Writes one log line to stderr in a single `write`, so that lines from
/// several generations sharing the same pipe never interleave.
pub fn log(message: std::fmt::Arguments<'_>) {
    let line = format!("[{}] {message}\n", std::process::id());
    let _ = io::stderr().write_all(line.as_bytes());
}

macro_rules! log {
    ($($arg:tt)*) => { log(format_args!($($arg)*)) };
}

/// Whether `--events` was given.
static EVENTS: AtomicBool = AtomicBool::new(false);

/// With `--events`, writes `event` on stderr as a machine-readable line.
fn emit(event: impl FnOnce(u32) -> Event) {
    if EVENTS.load(Ordering::Relaxed) {
        events::emit(&event(std::process::id()));
    }
}

/// The event line for what the signal handler did.
fn signal_event(event: &signals::Event, pid: u32) -> Event {
    match event {
        signals::Event::Graceful { signal } | signals::Event::Immediate { signal } => {
            Event::Stopping {
                pid,
                signal: format!("{signal:?}"),
                immediate: matches!(event, signals::Event::Immediate { .. }),
            }
        }
        signals::Event::UpgradeStarted { signal } => Event::Upgrading {
            pid,
            signal: format!("{signal:?}"),
        },
        signals::Event::Upgraded { pid: child } => Event::Upgraded { pid, child: *child },
        signals::Event::UpgradeFailed(e) => Event::UpgradeFailed {
            pid,
            reason: e.to_string(),
        },
        other => Event::Notice {
            pid,
            text: other.to_string(),
        },
    }
}

/// Parses `args` (without the program name) and serves until stopped.
pub fn main_with_args(args: impl Iterator<Item = String>) -> io::Result<()> {
    run(parse_args(args)?)
}

/// Serves until the shutdown has stopped: after an upgrade or a SIGTERM,
/// once the last connection is gone or the drain deadline has passed.
pub fn run(args: Args) -> io::Result<()> {
    let started = Instant::now();
    EVENTS.store(args.events, Ordering::Relaxed);
    let shutdown = Shutdown::builder()
        .drain_timeout(args.drain_timeout)
        .build();
    // First, before anything else opens an fd: take what the parent passed.
    let mut options = Options::default().ready_timeout(args.ready_timeout);
    if let Some(path) = &args.pid_file {
        options = options.pid_file(path);
    }
    if let Some(probation) = args.probation {
        options = options.probation(probation);
    }
    let upgrader = Upgrader::new(&shutdown, options).map_err(io::Error::other)?;
    let mut config = seamless::conn::Config::default();
    if let Some(grace) = args.idle_grace {
        config = config.idle_grace(grace);
    }
    let tracker = Tracker::with_config(&shutdown, config);

    let listener = upgrader.tcp_listener("http", args.listen.as_str())?;
    let addr = listener.local_addr()?;
    let mut listener = tracker.listen(Async::new(listener)?);
    if !args.no_handover {
        // Idle keep-alive connections move to the next generation, alive.
        upgrader.hand_over(&mut listener)?;
    }
    let mut signals = SignalHandler::new(&shutdown)?.upgrader(upgrader.clone());

    let how = if upgrader.has_parent() {
        "inherited"
    } else {
        "new socket"
    };
    log!("listening on {addr} ({how})");
    emit(|pid| Event::Listening {
        pid,
        addr,
        inherited: upgrader.has_parent(),
    });
    {
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "listening on {addr}")?;
        stdout.flush()?;
    }
    upgrader.ready()?;
    log!("ready in {} ms", started.elapsed().as_millis());
    emit(|pid| Event::Ready {
        pid,
        ms: started.elapsed().as_millis() as u64,
    });

    let executor = smol::LocalExecutor::new();
    let drain = std::cell::RefCell::new(DrainLog::new(REPORT_EVERY));
    smol::block_on(executor.run(async {
        let accepting = accept_loop(listener, &executor);
        // Ends right after its last report, once stopped; like `stopped()`,
        // it enforces the drain deadline while it is awaited.
        let reporting =
            tracker.report_drain(REPORT_EVERY, |counts| drain.borrow_mut().report(counts));
        let handling_signals = async {
            loop {
                let event = signals.next().await;
                log!("{event}");
                emit(|pid| signal_event(&event, pid));
            }
        };
        // The accept loop ends when draining starts and the reporter once
        // stopped; the signal loop and the watchdog never end.
        let work = async {
            future::zip(accepting, reporting).await;
        };
        // The drain is over once its last connection is gone (closed or
        // handed over); `Stopped` itself may come later, after probation.
        // Polled for the log's sake: nothing waits on it.
        let drained = async {
            shutdown.draining().await;
            // Handed over means taken by the next generation: wait for its word.
            let busy = || tracker.counts().total > 0 || upgrader.handover_stats().in_flight > 0;
            while busy() && !shutdown.is_stopped() {
                Timer::after(Duration::from_millis(1)).await;
            }
            drain
                .borrow_mut()
                .finish(&tracker.counts(), upgrader.handover_stats());
            future::pending::<()>().await
        };
        let background = future::or(handling_signals, seamless::systemd::feed_watchdog());
        future::or(work, future::or(background, drained)).await;
    }));
    // Stopped at the deadline with connections left, or before the drain's
    // first look: said now.
    drain
        .borrow_mut()
        .finish(&tracker.counts(), upgrader.handover_stats());
    log!("stopped");
    emit(|pid| Event::Stopped { pid });
    Ok(())
}

/// Drain progress, logged when it changes, and told to systemd.
struct DrainLog {
    /// When draining started, and how many connections were open then.
    start: Option<(Instant, usize)>,
    last: Option<Counts>,
    /// The summary was logged.
    finished: bool,
    /// `STATUS=` and, while connections keep closing, more stop time.
    systemd: seamless::systemd::DrainStatus,
}

impl DrainLog {
    fn new(every: Duration) -> Self {
        DrainLog {
            start: None,
            last: None,
            finished: false,
            systemd: seamless::systemd::DrainStatus::new(every),
        }
    }

    fn report(&mut self, counts: Counts) {
        self.start.get_or_insert((Instant::now(), counts.total));
        // Outside systemd this sends nothing.
        let _ = self.systemd.report(counts);
        if self.last.replace(counts) != Some(counts) {
            log!(
                "draining: {} connections (busy {}, idle {}, new {}, closing {})",
                counts.total,
                counts.busy,
                counts.idle,
                counts.new,
                counts.closing
            );
            emit(|pid| Event::Draining {
                pid,
                counts: events::Counts {
                    total: counts.total,
                    busy: counts.busy,
                    idle: counts.idle,
                    new: counts.new,
                    closing: counts.closing,
                },
            });
        }
    }

    /// Logs the summary, once. Without a report, the drain found no
    /// connection at all and ended at once.
    fn finish(&mut self, left: &Counts, handoff: HandoverStats) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let (start, open) = self.start.unwrap_or((Instant::now(), 0));
        let ms = start.elapsed().as_millis() as u64;
        log!(
            "drained {open} connections in {ms} ms ({} left at the deadline, \
             {} handed to the next generation, {} fell back to a close)",
            left.total,
            handoff.handed_over,
            handoff.fell_back
        );
        emit(|pid| Event::Drained {
            pid,
            connections: open,
            ms,
            left: left.total,
            handed_over: handoff.handed_over,
            fell_back: handoff.fell_back,
        });
    }
}

async fn accept_loop(
    mut listener: seamless::TrackedListener<Async<std::net::TcpListener>>,
    executor: &smol::LocalExecutor<'_>,
) {
    loop {
        match listener.accept().await {
            Ok(Some((stream, _peer))) => executor.spawn(serve(stream)).detach(),
            // Draining: this process takes no more connections.
            Ok(None) => return,
            // Usually transient (EMFILE, ECONNABORTED): back off a little.
            Err(e) => {
                log!("accept: {e}");
                emit(|pid| Event::AcceptFailed {
                    pid,
                    reason: e.to_string(),
                });
                Timer::after(Duration::from_millis(10)).await;
            }
        }
    }
}

type Stream = Tracked<Async<TcpStream>>;

/// A parsed request head.
#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    /// The client asked to close after this request.
    close: bool,
    /// HTTP/1.0 (answered as such).
    http10: bool,
    /// The request has a body, which this server does not read.
    has_body: bool,
    /// Bytes of the head, to remove from the buffer.
    len: usize,
}

impl Request {
    /// Stands for a request that could not be parsed, to answer it.
    fn bad() -> Request {
        Request {
            method: String::new(),
            target: "-".to_owned(),
            close: true,
            http10: false,
            has_body: false,
            len: 0,
        }
    }
}

enum Head {
    Complete(Request),
    Partial,
    /// A status to answer before closing.
    Invalid(u16),
}

fn parse_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(httparse::Error::TooManyHeaders) => return Head::Invalid(431),
        Err(_) => return Head::Invalid(400),
    };
    let http10 = request.version == Some(0);
    let mut close = http10; // HTTP/1.0 closes unless asked to keep alive
    let mut has_body = false;
    for header in request.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                    close = false;
                }
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding")
            || (header.name.eq_ignore_ascii_case("content-length") && value.trim() != "0")
        {
            has_body = true;
        }
    }
    Head::Complete(Request {
        method: request.method.unwrap_or_default().to_owned(),
        target: request.path.unwrap_or_default().to_owned(),
        close,
        http10,
        has_body,
        len,
    })
}

/// Serves one connection: request after request (pipelined ones too) until
/// either side closes.
async fn serve(mut stream: Stream) {
    // Bytes read but not yet used: the head being read, and whatever the
    // client pipelined after it.
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let request = loop {
            if !buf.is_empty() {
                match parse_head(&buf) {
                    Head::Complete(request) => break request,
                    Head::Invalid(status) => {
                        let _ = respond(&mut stream, status, &Request::bad(), true, false).await;
                        return stream.close_lingering().await;
                    }
                    Head::Partial if buf.len() >= MAX_HEAD => {
                        let _ = respond(&mut stream, 431, &Request::bad(), true, false).await;
                        return stream.close_lingering().await;
                    }
                    Head::Partial => {}
                }
            }
            let mut chunk = [0u8; 4096];
            let room = (MAX_HEAD - buf.len()).min(chunk.len());
            // Part of a request read already sits in our own buffer, where
            // the tracker cannot see it: the connection is busy until the
            // request is whole (neither closed nor handed over under it).
            let _partial = (!buf.is_empty()).then(|| stream.busy());
            match stream.read(&mut chunk[..room]).await {
                // The peer closed, or the drain ended this idle connection.
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => return,
            }
        };
        buf.drain(..request.len);

        let (path, query) = request
            .target
            .split_once('?')
            .unwrap_or((&request.target, ""));
        match path {
            "/decline" => stream.decline_handover(),
            "/state" => {
                if let Some(text) = query.strip_prefix("set=") {
                    let _ = stream.set_handover_state(text.as_bytes());
                }
            }
            _ => {}
        }
        let (status, close_anyway) = route(&request).await;
        // Decided when the response is written: a drain that started while the
        // request was handled still gets its `connection: close`.
        // A connection that moves to the next generation gets no goodbye.
        let close = close_anyway || request.close || stream.will_close();
        let head_only = request.method == "HEAD";
        if respond(&mut stream, status, &request, close, head_only)
            .await
            .is_err()
        {
            return;
        }
        if close {
            return stream.close_lingering().await;
        }
    }
}

/// The status for `request`, and whether the connection must close after it.
async fn route(request: &Request) -> (u16, bool) {
    if request.has_body {
        return (400, true); // bodies are not read here
    }
    if request.method != "GET" && request.method != "HEAD" {
        return (405, false);
    }
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    match path {
        "/" | "/decline" | "/state" => (200, false),
        "/sleep" => {
            let ms = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("ms="))
                .and_then(|ms| ms.parse::<u64>().ok())
                .filter(|ms| *ms <= MAX_SLEEP_MS);
            match ms {
                Some(ms) => {
                    Timer::after(Duration::from_millis(ms)).await;
                    (200, false)
                }
                None => (400, false),
            }
        }
        _ => (404, false),
    }
}

async fn respond(
    stream: &mut Stream,
    status: u16,
    request: &Request,
    close: bool,
    head_only: bool,
) -> io::Result<()> {
    let http10 = request.http10;
    let (reason, body) = match status {
        200 => ("OK", "ok\n"),
        400 => ("Bad Request", "bad request\n"),
        404 => ("Not Found", "not found\n"),
        405 => ("Method Not Allowed", "method not allowed\n"),
        431 => (
            "Request Header Fields Too Large",
            "request head too large\n",
        ),
        _ => ("Error", "error\n"),
    };
    let version = if http10 { "1.0" } else { "1.1" };
    let connection = match (close, http10) {
        (true, _) => "connection: close\r\n",
        (false, true) => "connection: keep-alive\r\n",
        (false, false) => "",
    };
    let allow = if status == 405 {
        "allow: GET, HEAD\r\n"
    } else {
        ""
    };
    // httparse only lets visible ASCII through in a target.
    let target = &request.target;
    let state = match stream.handover_state() {
        [] => String::new(),
        state => format!("x-state: {}\r\n", String::from_utf8_lossy(state)),
    };
    let mut response = format!(
        "HTTP/{version} {status} {reason}\r\ncontent-type: text/plain\r\n\
         content-length: {}\r\nx-generation: {}\r\nx-target: {target}\r\n\
         {state}{allow}{connection}\r\n",
        body.len(),
        std::process::id()
    );
    if !head_only {
        response.push_str(body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await
}
