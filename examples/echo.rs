//! A line-echo server on smol that drains gracefully on SIGINT or SIGTERM.
//!
//! ```text
//! cargo run --example echo -- --listen 127.0.0.1:7000
//! ```
//!
//! Every line a client sends is echoed back. A line starting with `slow` is
//! echoed after [`SLOW`], which makes it easy to watch a request in flight
//! survive a drain (`printf 'slow\n' | nc 127.0.0.1 7000`, then Ctrl-C the
//! server).
//!
//! The first SIGINT or SIGTERM starts a graceful shutdown with a deadline of
//! [`DEADLINE`]: the listener closes, requests in flight finish, idle
//! connections are closed cleanly. A second signal stops at once.
//!
//! The pieces are public functions so that `examples/shutdown.rs` can run the
//! same server in-process.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use async_io::{Async, Timer};
use futures_lite::io::BufReader;
use futures_lite::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use seamless::conn::{Config, Counts};
use seamless::signals::{Action, Signal, SignalHandler};
use seamless::{Shutdown, Tracked, TrackedListener, Tracker};

/// How long a line starting with `slow` takes to be echoed.
pub const SLOW: Duration = Duration::from_millis(500);
/// How long a graceful shutdown may take.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// How often progress is printed while draining.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Longest line served; a longer one ends the connection.
const MAX_LINE: u64 = 64 * 1024;

/// A running echo server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Trigger `graceful`/`immediate` here, and await `stopped`.
    pub shutdown: Shutdown,
    /// Connection counts.
    pub tracker: Tracker,
    /// The accept loop; it ends when draining starts.
    pub accept: smol::Task<()>,
}

/// Binds `addr` and starts accepting on smol's executor.
pub fn start(addr: SocketAddr, config: Config) -> io::Result<Server> {
    let listener = Async::<TcpListener>::bind(addr)?;
    let addr = listener.get_ref().local_addr()?;
    let shutdown = Shutdown::builder().drain_timeout(DEADLINE).build();
    let tracker = Tracker::with_config(&shutdown, config);
    let accept = smol::spawn(accept_loop(tracker.listen(listener)));
    Ok(Server {
        addr,
        shutdown,
        tracker,
        accept,
    })
}

/// Accepts until draining starts, one task per connection.
pub async fn accept_loop(mut listener: TrackedListener<Async<TcpListener>>) {
    loop {
        match listener.accept().await {
            Ok(Some((conn, _peer))) => {
                smol::spawn(async move {
                    if let Err(e) = serve_conn(conn).await {
                        eprintln!("connection error: {e}");
                    }
                })
                .detach();
            }
            // Draining: the listener is closed now.
            Ok(None) => return,
            // Usually transient (out of fds, a connection reset while queued).
            Err(e) => {
                eprintln!("accept error: {e}");
                Timer::after(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Echoes lines until the client closes or the drain ends the connection
/// (a drained idle connection reads `Ok(0)`).
pub async fn serve_conn(conn: Tracked<Async<TcpStream>>) -> io::Result<()> {
    let mut conn = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut conn)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(()); // EOF, a drain, or an over-long or partial line
        }
        if line.starts_with(b"slow") {
            Timer::after(SLOW).await;
        }
        conn.get_mut().write_all(&line).await?;
    }
}

/// Prints one line of drain progress.
pub fn print_progress(c: Counts) {
    let s = if c.total == 1 { "" } else { "s" };
    println!(
        "draining: {} connection{s} left (busy {}, idle {}, new {}, closing {})",
        c.total, c.busy, c.idle, c.new, c.closing
    );
}

fn parse_args() -> Result<SocketAddr, String> {
    let mut listen = "127.0.0.1:7000".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--listen" {
            listen = args.next().ok_or("--listen needs an address")?;
        } else if let Some(addr) = arg.strip_prefix("--listen=") {
            listen = addr.to_owned();
        } else {
            return Err(format!("unknown argument {arg:?}"));
        }
    }
    listen
        .parse()
        .map_err(|e| format!("bad address {listen:?}: {e}"))
}

fn main() -> ExitCode {
    let addr = match parse_args() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("{e}\nusage: echo [--listen ADDR]");
            return ExitCode::from(2);
        }
    };
    match smol::block_on(run(addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(addr: SocketAddr) -> io::Result<()> {
    let server = start(addr, Config::default())?;
    // Before announcing the address, so that a signal sent as soon as the
    // line is read is handled rather than killing the process. The first
    // SIGINT/SIGTERM drains, a second one stops at once.
    let graceful = [
        (Signal::Int, Action::Graceful),
        (Signal::Term, Action::Graceful),
    ];
    let mut signals = SignalHandler::with_map(&server.shutdown, graceful)?;
    println!("listening on {}", server.addr);
    io::stdout().flush()?;
    smol::spawn(async move {
        loop {
            println!("{}", signals.next().await);
        }
    })
    .detach();

    server.accept.await;
    // Ends once stopped, after a last report.
    server
        .tracker
        .report_drain(PROGRESS_EVERY, print_progress)
        .await;
    let left = server.tracker.counts().total;
    let s = if left == 1 { "" } else { "s" };
    println!("stopped: {left} connection{s} left");
    io::stdout().flush()?;
    Ok(())
}
