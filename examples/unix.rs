//! A line server on a Unix socket, on smol, with graceful shutdown and hot
//! restart.
//!
//! ```text
//! cargo run --example unix -- --listen /tmp/lines.sock --pid-file /tmp/lines.pid
//! printf 'hello\n' | nc -U /tmp/lines.sock  # "<pid> hello"
//! kill -HUP $(cat /tmp/lines.pid)            # hot restart: a new pid answers
//! ```
//!
//! `upgrader.unix_listener` binds the path, or takes the socket a previous
//! generation passed on, so a hot restart never unbinds it. Each line is
//! answered with this generation's pid; a line `hold` once more
//! when this generation drains.

#[path = "common/args.rs"]
mod args;

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use futures_lite::io::BufReader;
use futures_lite::{future, AsyncBufReadExt, AsyncWriteExt};
use seamless::conn::Async;
use seamless::signals::SignalHandler;
use seamless::{Tracked, Tracker, Upgrader};

use args::{is_hold, reply, Args, HOLD_AT_MOST};

fn main() -> ExitCode {
    let args = Args::parse("/tmp/seamless-lines.sock");
    match smol::block_on(run(args)) {
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
    let listener = upgrader.unix_listener("lines", &args.listen)?;
    let mut listener = tracker.listen(Async::new(listener)?);
    let mut signals = SignalHandler::new(&shutdown)?.upgrader(upgrader.clone());
    upgrader.ready()?;
    println!("listening on {}", args.listen);
    io::stdout().flush()?;
    smol::spawn(async move {
        loop {
            eprintln!("[{pid}] {}", signals.next().await);
        }
    })
    .detach();

    loop {
        match listener.accept().await {
            Ok(Some((conn, _))) => smol::spawn(async move {
                if let Err(e) = serve(conn).await {
                    eprintln!("[{pid}] connection error: {e}");
                }
            })
            .detach(),
            Ok(None) => break,
            Err(e) => {
                eprintln!("[{pid}] accept error: {e}");
                async_io::Timer::after(Duration::from_millis(50)).await;
            }
        }
    }
    shutdown.stopped().await;
    eprintln!("[{pid}] stopped");
    Ok(())
}

async fn serve(conn: Tracked<Async<UnixStream>>) -> io::Result<()> {
    let mut conn = BufReader::new(conn);
    let mut line = String::new();
    while conn.read_line(&mut line).await? > 0 {
        if is_hold(&line) {
            conn.get_mut()
                .write_all(reply("holding").as_bytes())
                .await?;
            future::or(conn.get_ref().draining(), async {
                async_io::Timer::after(HOLD_AT_MOST).await;
            })
            .await;
        }
        conn.get_mut().write_all(reply(&line).as_bytes()).await?;
        line.clear();
    }
    Ok(())
}
