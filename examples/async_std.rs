//! A line server on async-std, with graceful shutdown and hot restart.
//!
//! ```text
//! cargo run --example async_std -- --listen 127.0.0.1:7001 --pid-file /tmp/lines.pid
//! printf 'hello\n' | nc 127.0.0.1 7001     # "<pid> hello"
//! kill -HUP $(cat /tmp/lines.pid)           # hot restart: a new pid answers
//! ```
//!
//! Each line is answered with this generation's pid and the line. A line
//! `hold` is answered at once (`<pid> holding`) and again once this
//! generation drains: a request that spans a hot restart, still answered by
//! the generation that took it.
//!
//! async-std runs on async-io, so its listener becomes std's
//! (`std::net::TcpListener::try_from`), which `Async::new` wraps: then
//! `tracker.listen` takes it, and the accepted streams are
//! `Tracked<Async<TcpStream>>`, which async-std's `io` traits work on as
//! they are. Tracking async-std's *own* `TcpStream` instead (with
//! `tracker.track` or `Incoming`) needs its `AsFd`, behind async-std's
//! `io_safety` feature.

#[path = "common/args.rs"]
mod args;

use std::io::{self, Write};
use std::net::TcpStream;
use std::process::ExitCode;

use async_std::io::BufReader;
use async_std::prelude::*;
use async_std::task;
use seamless::conn::Async;
use seamless::signals::SignalHandler;
use seamless::{Tracked, Tracker, Upgrader};

use args::{is_hold, reply, Args, HOLD_AT_MOST};

fn main() -> ExitCode {
    let args = Args::parse("127.0.0.1:7001");
    match task::block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[{}] error: {e}", std::process::id());
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let pid = std::process::id();
    let shutdown = args.shutdown();
    let upgrader = Upgrader::new(&shutdown, args.options())?;
    let tracker = Tracker::new(&shutdown);

    // However the async-std listener came to be (here: inherited or bound by
    // the upgrader), std's listener is one conversion away.
    let listener = async_std::net::TcpListener::from(upgrader.tcp_listener("lines", &args.listen)?);
    let addr = listener.local_addr()?;
    let mut listener = tracker.listen(Async::new(std::net::TcpListener::try_from(listener)?)?);

    let mut signals = SignalHandler::new(&shutdown)?.upgrader(upgrader.clone());
    upgrader.ready()?;
    println!("listening on {addr}");
    io::stdout().flush()?;
    task::spawn(async move {
        loop {
            eprintln!("[{pid}] {}", signals.next().await);
        }
    });

    // `None` once draining has started: a successor is ready, or a SIGTERM.
    loop {
        match listener.accept().await {
            Ok(Some((conn, _))) => {
                task::spawn(async move {
                    if let Err(e) = serve(conn).await {
                        eprintln!("[{pid}] connection error: {e}");
                    }
                });
            }
            Ok(None) => break,
            Err(e) => {
                eprintln!("[{pid}] accept error: {e}");
                task::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    // Connections in flight finish; idle ones are closed cleanly.
    shutdown.stopped().await;
    eprintln!("[{pid}] stopped");
    Ok(())
}

/// Answers lines until the client closes, or the drain ends the connection
/// (a drained idle connection reads `Ok(0)`).
async fn serve(conn: Tracked<Async<TcpStream>>) -> io::Result<()> {
    let mut conn = BufReader::new(conn);
    let mut line = String::new();
    while conn.read_line(&mut line).await? > 0 {
        if is_hold(&line) {
            conn.get_mut()
                .write_all(reply("holding").as_bytes())
                .await?;
            let _ = async_std::future::timeout(HOLD_AT_MOST, conn.get_ref().draining()).await;
        }
        conn.get_mut().write_all(reply(&line).as_bytes()).await?;
        line.clear();
    }
    Ok(())
}
