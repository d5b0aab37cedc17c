//! A line-echo server on smol with graceful shutdown and hot restart.
//!
//! ```text
//! cargo run --example echo -- --listen 127.0.0.1:7000
//! nc 127.0.0.1 7000                    # type lines: each is echoed back
//! kill -HUP <pid>                      # hot restart: the nc session goes on
//! ```
//!
//! Every line a client sends is echoed back. A line starting with `slow` is
//! echoed after [`SLOW`], which makes it easy to watch a request in flight
//! survive a drain (`printf 'slow\n' | nc 127.0.0.1 7000`, then Ctrl-C the
//! server).
//!
//! SIGHUP starts the next generation, and idle sessions **move to it
//! alive** ([`Upgrader::hand_over`]): an `nc` session typed into across a
//! hot restart is answered by the new generation, with no reconnect. The
//! first SIGINT or SIGTERM starts a graceful shutdown with a deadline of
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
use seamless::handoff::Options;
use seamless::signals::SignalHandler;
use seamless::{Shutdown, Tracked, TrackedListener, Tracker, Upgrader};

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
        // Part of a line read ahead into the buffer, where the tracker
        // cannot see it: busy until the line is whole (neither closed nor
        // handed over under it).
        let _partial = (!conn.buffer().is_empty()).then(|| conn.get_ref().busy());
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

async fn run(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let shutdown = Shutdown::builder().drain_timeout(DEADLINE).build();
    // First: take the listener a previous generation passed, if any.
    let upgrader = Upgrader::new(&shutdown, Options::default())?;
    let tracker = Tracker::new(&shutdown);
    let listener = upgrader.tcp_listener("echo", addr)?;
    let addr = listener.local_addr()?;
    let mut listener = tracker.listen(Async::new(listener)?);
    // Idle sessions move to the next generation instead of being closed.
    upgrader.hand_over(&mut listener)?;
    // Before announcing the address, so that a signal sent as soon as the
    // line is read is handled rather than killing the process. SIGHUP
    // upgrades; the first SIGINT/SIGTERM drains, a second stops at once.
    let mut signals = SignalHandler::new(&shutdown)?.upgrader(upgrader.clone());
    upgrader.ready()?;
    println!("listening on {addr} (pid {})", std::process::id());
    io::stdout().flush()?;
    let accept = smol::spawn(accept_loop(listener));
    let events = smol::spawn(async move {
        loop {
            println!("{}", signals.next().await);
        }
    });

    accept.await;
    // Ends once stopped, after a last report; it drives the handoff's
    // background work and the deadline meanwhile.
    tracker.report_drain(PROGRESS_EVERY, print_progress).await;
    drop(events);
    let left = tracker.counts().total;
    let s = if left == 1 { "" } else { "s" };
    let handoff = upgrader.handover_stats();
    println!(
        "stopped: {left} connection{s} left; {} handed to the next generation",
        handoff.handed_over
    );
    io::stdout().flush()?;
    Ok(())
}
