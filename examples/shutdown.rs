//! What a graceful shutdown does to each kind of client.
//!
//! ```text
//! cargo run --release --example shutdown
//! ```
//!
//! Starts the echo server of `examples/echo.rs` in-process on 127.0.0.1:0,
//! puts it under a small concurrent load, triggers a graceful shutdown, and
//! tells what happened to each client:
//!
//! - **in flight**: sent a `slow` line (echoed after 500 ms) just before the
//!   drain; the reply must still arrive;
//! - **idle**: keep-alive clients done with their request;
//! - **silent**: connected, never send anything;
//! - **late**: connected just before the drain, send their request right
//!   after it started, inside the first-byte grace.
//!
//! Every client must end with a clean EOF; every request must be answered.
//! Exits non-zero on any reset or lost request. Takes a few seconds.

#[allow(dead_code)]
#[path = "echo.rs"]
mod echo;

use std::fmt;
use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use seamless::conn::{Config, Counts};
use seamless::{Shutdown, Tracker};

/// Clients of each kind.
const CLIENTS: usize = 8;
/// Deadline of the graceful shutdown.
const DEADLINE: Duration = Duration::from_secs(5);
/// First-byte grace for connections that have not sent anything yet.
const GRACE: Duration = Duration::from_secs(1);
/// How long one client may take in all before it counts as lost.
const CLIENT_LIMIT: Duration = Duration::from_secs(10);
/// How long setting up the load may take.
const SETUP_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InFlight,
    Idle,
    Silent,
    Late,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::InFlight, Kind::Idle, Kind::Silent, Kind::Late];

    fn label(self) -> &'static str {
        match self {
            Kind::InFlight => "in flight (slow request)",
            Kind::Idle => "idle keep-alive",
            Kind::Silent => "silent (never sends)",
            Kind::Late => "late (request after drain)",
        }
    }

    /// Whether this kind has a request outstanding across the drain.
    fn asks_during_drain(self) -> bool {
        matches!(self, Kind::InFlight | Kind::Late)
    }
}

/// How a client's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// A clean EOF and no reset.
    Eof,
    /// `ECONNRESET`/`EPIPE`, seen on a read or write or left as `SO_ERROR`.
    Reset,
    /// Another error, or no end within [`CLIENT_LIMIT`].
    Other(String),
}

#[derive(Debug, Clone)]
struct Outcome {
    kind: Kind,
    /// The request sent around the drain was answered in full (None: the
    /// client had nothing outstanding).
    answered: Option<bool>,
    end: End,
}

impl Outcome {
    fn lost(&self) -> bool {
        self.answered == Some(false)
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
    )
}

fn end_of(e: io::Error) -> End {
    if is_reset(&e) {
        End::Reset
    } else {
        End::Other(e.to_string())
    }
}

/// Sends `line` (if any), waits for its echo, then reads to the end.
async fn converse(stream: &mut Async<TcpStream>, line: Option<&str>) -> (Option<bool>, End) {
    let mut answered = None;
    if let Some(line) = line {
        if let Err(e) = stream.write_all(line.as_bytes()).await {
            return (Some(false), end_of(e));
        }
        let mut reply = vec![0; line.len()];
        match stream.read_exact(&mut reply).await {
            Ok(()) => answered = Some(reply == line.as_bytes()),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return (Some(false), End::Eof),
            Err(e) => return (Some(false), end_of(e)),
        }
    }
    let mut rest = Vec::new();
    let end = match stream.read_to_end(&mut rest).await {
        Ok(_) if !rest.is_empty() => End::Other(format!("{} unexpected bytes", rest.len())),
        // A reset that came after our EOF (data we sent hit a closed socket).
        Ok(_) => match stream.get_ref().take_error() {
            Ok(None) => End::Eof,
            Ok(Some(e)) | Err(e) => end_of(e),
        },
        Err(e) => end_of(e),
    };
    (answered, end)
}

/// One client of `kind`, already connected. `ready` is signalled once it is
/// in the state it should be in when the drain starts.
async fn client(
    kind: Kind,
    id: usize,
    mut stream: Async<TcpStream>,
    shutdown: Shutdown,
) -> Outcome {
    let run = async {
        match kind {
            Kind::InFlight => converse(&mut stream, Some(&format!("slow {id}\n"))).await,
            Kind::Idle | Kind::Silent => converse(&mut stream, None).await,
            Kind::Late => {
                shutdown.draining().await;
                // Right after the drain started, staggered, inside the grace.
                Timer::after(Duration::from_millis(25 * id as u64)).await;
                converse(&mut stream, Some(&format!("late {id}\n"))).await
            }
        }
    };
    let timeout = async {
        Timer::after(CLIENT_LIMIT).await;
        let answered = kind.asks_during_drain().then_some(false);
        (answered, End::Other("timed out".into()))
    };
    let (answered, end) = future::or(run, timeout).await;
    Outcome {
        kind,
        answered,
        end,
    }
}

/// Waits until the server's counts satisfy `done`, bounded by [`SETUP_LIMIT`].
async fn wait_counts(
    tracker: &Tracker,
    what: &str,
    done: impl Fn(Counts) -> bool,
) -> io::Result<()> {
    let start = Instant::now();
    while !done(tracker.counts()) {
        if start.elapsed() > SETUP_LIMIT {
            let msg = format!(
                "setup: no {what} after {SETUP_LIMIT:?}: {:?}",
                tracker.counts()
            );
            return Err(io::Error::new(ErrorKind::TimedOut, msg));
        }
        Timer::after(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Opens the load: every kind of client, each in the state it should be in
/// when the drain starts. Returns the client tasks.
async fn start_load(server: &echo::Server) -> io::Result<Vec<smol::Task<Outcome>>> {
    let addr = server.addr;
    let tracker = &server.tracker;
    let mut tasks = Vec::new();
    let mut spawn = |kind, id, stream| {
        tasks.push(smol::spawn(client(
            kind,
            id,
            stream,
            server.shutdown.clone(),
        )));
    };

    // Idle: one request answered, now waiting on the connection.
    for id in 0..CLIENTS {
        let mut stream = Async::<TcpStream>::connect(addr).await?;
        let line = format!("hello {id}\n");
        stream.write_all(line.as_bytes()).await?;
        let mut reply = vec![0; line.len()];
        stream.read_exact(&mut reply).await?;
        spawn(Kind::Idle, id, stream);
    }
    wait_counts(tracker, "idle connections", |c| c.idle == CLIENTS).await?;

    // Silent and late: connected and accepted, nothing sent yet. (Waiting
    // for the accept matters: a connection still in the listen backlog when
    // the listener closes is reset by the kernel.)
    for kind in [Kind::Silent, Kind::Late] {
        for id in 0..CLIENTS {
            spawn(kind, id, Async::<TcpStream>::connect(addr).await?);
        }
    }
    wait_counts(tracker, "new connections", |c| c.new == 2 * CLIENTS).await?;

    // In flight: their `slow` request is being handled when the drain starts.
    for id in 0..CLIENTS {
        spawn(Kind::InFlight, id, Async::<TcpStream>::connect(addr).await?);
    }
    wait_counts(tracker, "busy connections", |c| c.busy == CLIENTS).await?;
    Ok(tasks)
}

/// Triggers the drain, prints its progress, and returns how long it took.
async fn drain(server: &echo::Server) -> Duration {
    let start = Instant::now();
    println!(
        "graceful shutdown, deadline {DEADLINE:?}: {:?}",
        server.tracker.counts()
    );
    server.shutdown.graceful(DEADLINE);
    // Ends once stopped, after a last report.
    server
        .tracker
        .report_drain(echo::PROGRESS_EVERY, echo::print_progress)
        .await;
    start.elapsed()
}

#[derive(Default)]
struct Row {
    clients: usize,
    completed: usize,
    clean: usize,
    reset: usize,
    lost: usize,
    other: usize,
}

impl Row {
    fn bad(&self) -> bool {
        self.reset > 0 || self.lost > 0 || self.other > 0
    }
}

struct Table(Vec<(Kind, Row)>);

impl Table {
    fn new(outcomes: &[Outcome]) -> Self {
        let rows = Kind::ALL.iter().map(|&kind| {
            let mut row = Row::default();
            for o in outcomes.iter().filter(|o| o.kind == kind) {
                row.clients += 1;
                row.completed += usize::from(o.answered == Some(true));
                row.lost += usize::from(o.lost());
                match o.end {
                    End::Eof => row.clean += 1,
                    End::Reset => row.reset += 1,
                    End::Other(_) => row.other += 1,
                }
            }
            (kind, row)
        });
        Table(rows.collect())
    }

    fn bad(&self) -> bool {
        self.0.iter().any(|(_, row)| row.bad())
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<28} {:>7} {:>9} {:>10} {:>5} {:>4} {:>5}",
            "client kind", "clients", "completed", "clean EOF", "reset", "lost", "other"
        )?;
        for (kind, row) in &self.0 {
            let completed = if kind.asks_during_drain() {
                row.completed.to_string()
            } else {
                "-".to_owned()
            };
            writeln!(
                f,
                "{:<28} {:>7} {:>9} {:>10} {:>5} {:>4} {:>5}",
                kind.label(),
                row.clients,
                completed,
                row.clean,
                row.reset,
                row.lost,
                row.other
            )?;
        }
        Ok(())
    }
}

async fn run() -> io::Result<bool> {
    let config = Config::default()
        .first_byte_grace(GRACE)
        .linger(Duration::from_millis(200));
    let server = echo::start(SocketAddr::from(([127, 0, 0, 1], 0)), config)?;
    println!("echo server on {}", server.addr);

    let tasks = start_load(&server).await?;
    let took = drain(&server).await;
    let refused = Async::<TcpStream>::connect(server.addr).await.is_err();

    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await);
    }
    println!("stopped after {took:.2?}; new connections refused after the drain: {refused}\n");
    let table = Table::new(&outcomes);
    print!("{table}");
    for o in outcomes.iter().filter(|o| o.end != End::Eof || o.lost()) {
        println!(
            "  {:?}: answered {:?}, ended {:?}",
            o.kind, o.answered, o.end
        );
    }
    Ok(!table.bad() && refused && took < DEADLINE)
}

fn main() -> ExitCode {
    match smol::block_on(run()) {
        Ok(true) => {
            println!("\nok: every request answered, every connection closed cleanly");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("\nFAILED: see above");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}
