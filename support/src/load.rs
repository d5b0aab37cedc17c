//! A load client for the HTTP servers under test: the library's `http`
//! example (`examples/common/http_server.rs`) and the hyper package's server.
//!
//! Built on async-io and futures-lite; its tasks run on one thread of its
//! own, on a `smol::LocalExecutor`. It only ever connects to loopback
//! addresses. Written here rather than taken from a crate: the HTTP load
//! tools and clients on crates.io run on tokio (hyper, reqwest, oha,
//! goose), and we need what none of them records anyway: which generation
//! answered, and the keep-alive race told apart from real failures.
//!
//! Two kinds of clients run side by side:
//!
//! - **keep-alive** clients reuse one connection. When the server answers
//!   `connection: close`, the next request goes on a new connection. When a
//!   *reused* idle connection is closed under a request before any byte of
//!   the response has arrived (EOF, or a reset on the write or before the
//!   first byte), the request — a GET, so idempotent — is retried **once** on
//!   a new connection, as HTTP clients do, and counted apart in
//!   [`Summary::retried_keepalive_race`]. That race (the server closes an
//!   idle connection just as the client sends on it) cannot be removed by any
//!   close, however careful; see "The keep-alive race" in the README.
//! - **fresh** clients open a new connection for every request
//!   (`connection: close`).
//!
//! One request in [`Config::sleep_one_in`] is `/sleep?ms=…`, so requests are
//! in flight across restarts. Every request is recorded: outcome (ok, or
//! failed by [`FailKind`]), latency, start time and the `x-generation` of
//! the answer. A request on a reused connection must be answered by the
//! generation that answered before on that connection, or by a newer one
//! (the connection was handed over, alive, to the next generation); an
//! answer from an older generation fails as [`FailKind::WrongGeneration`].
//! Generations are ordered by when the load first saw each answer.
//!
//! Everything is bounded: each client sends at most
//! [`Config::max_requests_per_client`] requests and stops after
//! [`Config::max_duration`] or when asked; each request (connect included)
//! times out after [`Config::request_timeout`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};

/// Largest response head accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest response body accepted (the server's are a few bytes).
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// Pause after a failed request, so a dead server is not spun on.
const BACKOFF: Duration = Duration::from_millis(10);

/// What to send.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server; must be a loopback address.
    pub addr: SocketAddr,
    /// Clients that reuse their connection.
    pub keepalive_clients: usize,
    /// Clients that open a new connection for every request.
    pub fresh_clients: usize,
    /// One request in this many (per client) is `/sleep?ms=sleep_ms`; 0 for
    /// none.
    pub sleep_one_in: u64,
    /// How long `/sleep` requests take.
    pub sleep_ms: u64,
    /// Clients stop after this long even if not asked to.
    pub max_duration: Duration,
    /// Clients stop after this many requests each.
    pub max_requests_per_client: u64,
    /// A request (connect included) that takes longer fails as
    /// [`FailKind::Timeout`].
    pub request_timeout: Duration,
}

impl Config {
    /// 16 keep-alive and 16 fresh clients, one request in 10 a 200 ms sleep,
    /// 10 s per request, at most 2 minutes.
    pub fn new(addr: SocketAddr) -> Self {
        Config {
            addr,
            keepalive_clients: 16,
            fresh_clients: 16,
            sleep_one_in: 10,
            sleep_ms: 200,
            max_duration: Duration::from_secs(120),
            max_requests_per_client: 1_000_000,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailKind {
    /// The connection was refused (`ECONNREFUSED`).
    Refused,
    /// Reset (or broken pipe) before any byte of the response.
    Reset,
    /// EOF before any byte of the response.
    EofBeforeResponse,
    /// EOF or reset after part of the response: a request cut in flight.
    CutMidResponse,
    /// No complete response within the request timeout.
    Timeout,
    /// Not a well-formed 200 response with an `x-generation`.
    BadResponse,
    /// Answered, on a reused connection, by an older generation than the
    /// one that answered before.
    WrongGeneration,
    /// Any other I/O error.
    Other,
}

impl FailKind {
    /// Every kind, in display order.
    pub const ALL: [FailKind; 8] = [
        FailKind::Refused,
        FailKind::Reset,
        FailKind::EofBeforeResponse,
        FailKind::CutMidResponse,
        FailKind::Timeout,
        FailKind::BadResponse,
        FailKind::WrongGeneration,
        FailKind::Other,
    ];

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            FailKind::Refused => "refused",
            FailKind::Reset => "reset",
            FailKind::EofBeforeResponse => "eof-before-response",
            FailKind::CutMidResponse => "cut-mid-response",
            FailKind::Timeout => "timeout",
            FailKind::BadResponse => "bad-response",
            FailKind::WrongGeneration => "wrong-generation",
            FailKind::Other => "other",
        }
    }

    fn of(error: &io::Error) -> FailKind {
        match error.kind() {
            ErrorKind::ConnectionRefused => FailKind::Refused,
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
                FailKind::Reset
            }
            ErrorKind::UnexpectedEof => FailKind::EofBeforeResponse,
            ErrorKind::TimedOut => FailKind::Timeout,
            _ => FailKind::Other,
        }
    }
}

impl fmt::Display for FailKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which kind of client sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// Reuses its connection.
    KeepAlive,
    /// A new connection per request.
    Fresh,
}

/// One request.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// Who sent it.
    pub client: ClientKind,
    /// A `/sleep` request.
    pub sleep: bool,
    /// When it was sent, from the start of the load.
    pub start: Duration,
    /// How long it took (retry included).
    pub latency: Duration,
    /// Ok, or why it failed.
    pub outcome: Result<(), FailKind>,
    /// The status of the response, if one arrived.
    pub status: Option<u16>,
    /// The `x-generation` of the response, if one arrived.
    pub generation: Option<u32>,
    /// For a request on a reused connection: the generation that answered
    /// the previous request on it, which must answer this one too.
    pub expected_generation: Option<u32>,
    /// It was retried once after a keep-alive race.
    pub retried: bool,
    /// A keep-alive client's request that needed new connections other
    /// than the client's first (its connection was closed under it, or the
    /// server said `connection: close`): how many it opened.
    pub reconnects: u32,
}

impl Record {
    /// A request sent at `start` (`since_load_start` into the run), ended now.
    fn new(client: ClientKind, sleep: bool, since_load_start: Duration, start: Instant) -> Self {
        Record {
            client,
            sleep,
            start: since_load_start,
            latency: start.elapsed(),
            outcome: Ok(()),
            status: None,
            generation: None,
            expected_generation: None,
            retried: false,
            reconnects: 0,
        }
    }

    /// Fills in what the exchange returned; an answer from an older
    /// generation than `expected_generation` fails.
    fn set_outcome(&mut self, outcome: &Result<Response, Failure>, order: &Generations) {
        match outcome {
            Ok(response) => {
                self.status = Some(200);
                self.generation = Some(response.generation);
                let seen = order.see(response.generation);
                if self
                    .expected_generation
                    .is_some_and(|g| seen < order.see(g))
                {
                    self.outcome = Err(FailKind::WrongGeneration);
                }
            }
            Err(failure) => {
                self.outcome = Err(failure.kind);
                self.status = failure.status;
                self.generation = failure.generation;
            }
        }
    }

    /// Whether it succeeded.
    pub fn ok(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// Counters readable while the load runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests sent so far.
    pub sent: AtomicU64,
    /// Requests answered with a 200 so far.
    pub completed: AtomicU64,
    /// Requests failed so far.
    pub failed: AtomicU64,
}

/// A load running on a thread of its own.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    thread: JoinHandle<Summary>,
}

impl Load {
    /// Starts the clients.
    ///
    /// # Panics
    ///
    /// If `config.addr` is not a loopback address.
    pub fn start(config: Config) -> Load {
        assert!(
            config.addr.ip().is_loopback(),
            "the load client only targets loopback addresses, not {}",
            config.addr
        );
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let thread = {
            let (stop, progress) = (stop.clone(), progress.clone());
            std::thread::Builder::new()
                .name("load".into())
                .spawn(move || run(config, stop, progress))
                .expect("spawning the load thread")
        };
        Load {
            stop,
            progress,
            thread,
        }
    }

    /// The live counters.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Requests answered with a 200 so far.
    pub fn completed(&self) -> u64 {
        self.progress.completed.load(Ordering::SeqCst)
    }

    /// Asks every client to stop after its current request, waits for them
    /// (at most about one request timeout) and sums up.
    pub fn stop(self) -> Summary {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the load thread panicked")
    }
}

struct Ctx {
    config: Config,
    started: Instant,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    order: Generations,
}

/// Generations in the order the load first saw them answer.
#[derive(Default)]
struct Generations {
    seen: std::sync::Mutex<Vec<u32>>,
}

impl Generations {
    /// Where `generation` stands in that order (seen now if new).
    fn see(&self, generation: u32) -> usize {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.iter().position(|&g| g == generation) {
            Some(at) => at,
            None => {
                seen.push(generation);
                seen.len() - 1
            }
        }
    }
}

impl Ctx {
    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.started.elapsed() >= self.config.max_duration
    }

    /// The path of request number `i` of client `client`, and whether it
    /// sleeps. Clients are staggered so sleeps are spread out.
    fn path(&self, client: usize, i: u64) -> (String, bool) {
        let every = self.config.sleep_one_in;
        if every > 0 && (i + client as u64) % every == every - 1 {
            (format!("/sleep?ms={}", self.config.sleep_ms), true)
        } else {
            ("/".to_owned(), false)
        }
    }

    fn record(&self, records: &mut Vec<Record>, record: Record) {
        let counter = if record.ok() {
            &self.progress.completed
        } else {
            &self.progress.failed
        };
        counter.fetch_add(1, Ordering::SeqCst);
        records.push(record);
    }
}

fn run(config: Config, stop: Arc<AtomicBool>, progress: Arc<Progress>) -> Summary {
    let ctx = Ctx {
        config,
        started: Instant::now(),
        stop,
        progress,
        order: Generations::default(),
    };
    let executor = smol::LocalExecutor::new();
    let mut tasks = Vec::new();
    for id in 0..ctx.config.keepalive_clients {
        tasks.push(executor.spawn(keepalive_client(&ctx, id)));
    }
    for id in 0..ctx.config.fresh_clients {
        let id = id + ctx.config.keepalive_clients;
        tasks.push(executor.spawn(fresh_client(&ctx, id)));
    }
    let records = async_io::block_on(executor.run(async {
        let mut records = Vec::new();
        for task in tasks {
            records.extend(task.await);
        }
        records
    }));
    Summary::new(ctx.started, records)
}

/// An open connection and what it has answered so far.
struct Conn {
    stream: Async<TcpStream>,
    /// The generation that answered the last request on it.
    generation: Option<u32>,
}

/// A complete 200 response.
struct Response {
    close: bool,
    generation: u32,
}

/// Why one attempt failed.
struct Failure {
    kind: FailKind,
    /// Nothing of a response had arrived yet.
    before_response: bool,
    status: Option<u16>,
    generation: Option<u32>,
}

impl Failure {
    fn before(kind: FailKind) -> Failure {
        Failure {
            kind,
            before_response: true,
            status: None,
            generation: None,
        }
    }

    fn during(kind: FailKind) -> Failure {
        Failure {
            before_response: false,
            ..Failure::before(kind)
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<Conn, Failure> {
    match Async::<TcpStream>::connect(addr).await {
        Ok(stream) => Ok(Conn {
            stream,
            generation: None,
        }),
        Err(e) => Err(Failure::before(FailKind::of(&e))),
    }
}

/// Sends one GET and reads its response in full.
async fn exchange(conn: &mut Conn, path: &str, close: bool) -> Result<Response, Failure> {
    let connection = if close { "connection: close\r\n" } else { "" };
    let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{connection}\r\n");
    if let Err(e) = conn.stream.write_all(request.as_bytes()).await {
        return Err(Failure::before(FailKind::of(&e)));
    }
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    let (head_len, status, body_len, close, generation) = loop {
        match conn.stream.read(&mut chunk).await {
            Ok(0) if buf.is_empty() => return Err(Failure::before(FailKind::EofBeforeResponse)),
            Err(e) if buf.is_empty() => return Err(Failure::before(FailKind::of(&e))),
            Ok(0) | Err(_) => return Err(Failure::during(FailKind::CutMidResponse)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        match parse_head(&buf) {
            Ok(Some(head)) => break head,
            Ok(None) if buf.len() < MAX_RESPONSE_HEAD => {}
            _ => return Err(Failure::during(FailKind::BadResponse)),
        }
    };
    let total = head_len + body_len;
    while buf.len() < total {
        match conn.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(Failure::during(FailKind::CutMidResponse)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let bad = |kind| Failure {
        status: Some(status),
        generation,
        ..Failure::during(kind)
    };
    // Nothing was pipelined, so nothing may follow the body.
    if buf.len() > total || status != 200 || &buf[head_len..] != b"ok\n" {
        return Err(bad(FailKind::BadResponse));
    }
    let Some(generation) = generation else {
        return Err(bad(FailKind::BadResponse));
    };
    Ok(Response { close, generation })
}

/// Parses a response head: its length, status, content length, whether it
/// says `connection: close`, and its `x-generation`.
#[allow(clippy::type_complexity)]
fn parse_head(buf: &[u8]) -> Result<Option<(usize, u16, usize, bool, Option<u32>)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let status = response.code.ok_or(())?;
    let (mut body_len, mut close, mut generation) = (None, response.version == Some(0), None);
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).map_err(|_| ())?.trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            body_len = Some(value.parse::<usize>().map_err(|_| ())?);
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("close"));
        } else if header.name.eq_ignore_ascii_case("x-generation") {
            generation = Some(value.parse::<u32>().map_err(|_| ())?);
        }
    }
    let body_len = body_len.filter(|n| *n <= MAX_RESPONSE_BODY).ok_or(())?;
    Ok(Some((head_len, status, body_len, close, generation)))
}

/// Runs `attempt` within the request timeout.
async fn timed<T>(
    timeout: Duration,
    attempt: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    future::or(attempt, async {
        Timer::after(timeout).await;
        Err(Failure::before(FailKind::Timeout))
    })
    .await
}

async fn keepalive_client(ctx: &Ctx, id: usize) -> Vec<Record> {
    let mut records = Vec::new();
    let mut conn: Option<Conn> = None;
    for i in 0..ctx.config.max_requests_per_client {
        if ctx.should_stop() {
            break;
        }
        let (path, sleep) = ctx.path(id, i);
        let start = Instant::now();
        ctx.progress.sent.fetch_add(1, Ordering::SeqCst);
        let expected = conn.as_ref().and_then(|c| c.generation);
        let mut retried = false;
        let mut connects = 0;
        let attempt = async {
            let reused = conn.is_some();
            if !reused {
                connects += 1;
                conn = Some(connect(ctx.config.addr).await?);
            }
            let open = conn.as_mut().expect("connected above");
            match exchange(open, &path, false).await {
                // The keep-alive race: retry once, on a new connection.
                Err(failure)
                    if reused
                        && failure.before_response
                        && matches!(
                            failure.kind,
                            FailKind::EofBeforeResponse | FailKind::Reset
                        ) =>
                {
                    retried = true;
                    conn = None;
                    connects += 1;
                    let fresh = conn.insert(connect(ctx.config.addr).await?);
                    exchange(fresh, &path, false).await
                }
                outcome => outcome,
            }
        };
        let outcome = timed(ctx.config.request_timeout, attempt).await;
        // After a retry the connection is a new one: nothing to compare to.
        let expected = if retried { None } else { expected };
        let mut record = Record::new(ClientKind::KeepAlive, sleep, start - ctx.started, start);
        record.retried = retried;
        // The client's very first connection is not a reconnect.
        record.reconnects = connects - u32::from(i == 0 && connects > 0);
        record.expected_generation = expected;
        record.set_outcome(&outcome, &ctx.order);
        match (&outcome, conn.as_mut()) {
            (Ok(response), Some(open)) if !response.close => {
                open.generation = Some(response.generation)
            }
            _ => conn = None,
        }
        let failed = !record.ok();
        ctx.record(&mut records, record);
        if failed {
            Timer::after(BACKOFF).await;
        }
    }
    records
}

async fn fresh_client(ctx: &Ctx, id: usize) -> Vec<Record> {
    let mut records = Vec::new();
    for i in 0..ctx.config.max_requests_per_client {
        if ctx.should_stop() {
            break;
        }
        let (path, sleep) = ctx.path(id, i);
        let start = Instant::now();
        ctx.progress.sent.fetch_add(1, Ordering::SeqCst);
        let attempt = async {
            let mut conn = connect(ctx.config.addr).await?;
            exchange(&mut conn, &path, true).await
        };
        let outcome = timed(ctx.config.request_timeout, attempt).await;
        let mut record = Record::new(ClientKind::Fresh, sleep, start - ctx.started, start);
        record.set_outcome(&outcome, &ctx.order);
        let failed = !record.ok();
        ctx.record(&mut records, record);
        if failed {
            Timer::after(BACKOFF).await;
        }
    }
    records
}

/// Sends one `GET /` on a new connection and returns the `x-generation`
/// that answered it. Blocks for at most `timeout`. Loopback only.
pub fn probe(addr: SocketAddr, timeout: Duration) -> io::Result<u32> {
    assert!(addr.ip().is_loopback(), "probe: not a loopback address");
    let attempt = async {
        let mut conn = connect(addr).await?;
        exchange(&mut conn, "/", true).await
    };
    match async_io::block_on(timed(timeout, attempt)) {
        Ok(response) => Ok(response.generation),
        Err(failure) => Err(io::Error::other(format!("probe failed: {}", failure.kind))),
    }
}

/// The outcome of a load run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// When the load started: [`Record::start`] counts from here.
    pub started: Instant,
    /// How long it ran.
    pub elapsed: Duration,
    /// Every request, per client in order.
    pub records: Vec<Record>,
    /// Requests sent.
    pub sent: u64,
    /// Requests answered in full with a 200 by the right generation.
    pub completed: u64,
    /// Requests failed, by kind.
    pub failed: BTreeMap<FailKind, u64>,
    /// Requests retried once after the keep-alive race (whatever the
    /// outcome of the retry).
    pub retried_keepalive_race: u64,
    /// `/sleep` requests sent.
    pub sleep_sent: u64,
    /// `/sleep` requests answered with a 200 by the right generation.
    pub sleep_ok: u64,
    /// Every `x-generation` seen.
    pub generations: BTreeSet<u32>,
    /// New connections keep-alive clients had to open after their first:
    /// each one a connection the server closed (at a restart, the drain
    /// closing an idle connection, or `connection: close`).
    pub reconnects: u64,
}

impl Summary {
    fn new(started: Instant, records: Vec<Record>) -> Summary {
        let mut failed = BTreeMap::new();
        let mut generations = BTreeSet::new();
        let (mut completed, mut retried, mut sleep_sent, mut sleep_ok) = (0, 0, 0, 0);
        for record in &records {
            match record.outcome {
                Ok(()) => completed += 1,
                Err(kind) => *failed.entry(kind).or_insert(0) += 1,
            }
            retried += u64::from(record.retried);
            if record.sleep {
                sleep_sent += 1;
                sleep_ok += u64::from(record.ok());
            }
            generations.extend(record.generation);
        }
        Summary {
            started,
            elapsed: started.elapsed(),
            sent: records.len() as u64,
            reconnects: records.iter().map(|r| u64::from(r.reconnects)).sum(),
            records,
            completed,
            failed,
            retried_keepalive_race: retried,
            sleep_sent,
            sleep_ok,
            generations,
        }
    }

    /// Requests failed, all kinds together.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Requests failed with `kind`.
    pub fn failed_with(&self, kind: FailKind) -> u64 {
        self.failed.get(&kind).copied().unwrap_or(0)
    }

    /// The failed requests.
    pub fn failures(&self) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(|r| !r.ok())
    }

    /// The sorted latencies of the successful requests `select` picks.
    pub fn latencies(&self, select: impl Fn(&Record) -> bool) -> Vec<Duration> {
        let mut latencies: Vec<Duration> = self
            .records
            .iter()
            .filter(|r| r.ok() && select(r))
            .map(|r| r.latency)
            .collect();
        latencies.sort_unstable();
        latencies
    }

    /// The failures by kind, as `kind=count, ...` (or `none`).
    pub fn failed_by_kind(&self) -> String {
        if self.failed.is_empty() {
            return "none".into();
        }
        let parts: Vec<String> = self
            .failed
            .iter()
            .map(|(kind, n)| format!("{kind}={n}"))
            .collect();
        parts.join(", ")
    }
}

/// The `p`-th percentile (0.0 to 1.0) of sorted `latencies`, nearest rank.
pub fn percentile(latencies: &[Duration], p: f64) -> Option<Duration> {
    if latencies.is_empty() {
        return None;
    }
    let rank = (p * latencies.len() as f64).ceil() as usize;
    Some(latencies[rank.clamp(1, latencies.len()) - 1])
}

/// The median of sorted `latencies`.
pub fn p50(latencies: &[Duration]) -> Option<Duration> {
    percentile(latencies, 0.50)
}

/// The 99th percentile of sorted `latencies`.
pub fn p99(latencies: &[Duration]) -> Option<Duration> {
    percentile(latencies, 0.99)
}

/// A latency for display, in milliseconds.
pub fn millis(latency: Option<Duration>) -> String {
    match latency {
        Some(d) => format!("{:.2} ms", d.as_secs_f64() * 1e3),
        None => "-".into(),
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fast = self.latencies(|r| !r.sleep);
        writeln!(
            f,
            "sent {}, completed {}, failed {} ({}), keep-alive race retries {}",
            self.sent,
            self.completed,
            self.failed_total(),
            self.failed_by_kind(),
            self.retried_keepalive_race
        )?;
        writeln!(
            f,
            "/sleep requests: {} sent, {} answered 200 by their generation",
            self.sleep_sent, self.sleep_ok
        )?;
        write!(
            f,
            "latency of GET /: p50 {}, p99 {}; {} generations seen in {:.1} s",
            millis(p50(&fast)),
            millis(p99(&fast)),
            self.generations.len(),
            self.elapsed.as_secs_f64()
        )
    }
}
