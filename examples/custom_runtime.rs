//! A line server with no executor crate: one `async_io::block_on` and a
//! hand-rolled loop that polls every connection itself.
//!
//! ```text
//! cargo run --example custom_runtime -- --listen 127.0.0.1:7003 --pid-file /tmp/custom.pid
//! printf 'hello\n' | nc 127.0.0.1 7003    # "<pid> hello"
//! kill -HUP $(cat /tmp/custom.pid)         # hot restart: a new pid answers
//! ```
//!
//! # What the reactor needs
//!
//! `seamless` spawns nothing and needs no executor, but its timers (the
//! first-byte and idle graces, the linger time, the drain deadline) are
//! `async_io::Timer`s, and its listeners and streams here are
//! `async_io::Async` I/O. Both only fire while async-io's **reactor is
//! driven**:
//!
//! - `async_io::block_on` drives it on the calling thread whenever the
//!   future it runs is pending (this example);
//! - otherwise async-io's own background thread (`async-io`, started on
//!   first use) drives it, and wakes your wakers from there.
//!
//! So a loop of your own works as long as it either runs inside
//! `async_io::block_on`, or sleeps in a way that a waker from another thread
//! can end (a condition variable, a channel, an eventfd of your own
//! poller), never in a bare `epoll_wait` on its own fds only.
//!
//! Each line is answered with this generation's pid; a line `hold` once more
//! when this generation drains.

#[path = "common/args.rs"]
mod args;

use std::future::Future;
use std::io::{self, Write};
use std::net::TcpStream;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::Poll;
use std::time::Duration;

use async_io::Timer;
use futures_lite::io::BufReader;
use futures_lite::{future, AsyncBufReadExt, AsyncWriteExt, Stream};
use seamless::conn::Async;
use seamless::signals::SignalHandler;
use seamless::{Tracked, Tracker, Upgrader};

use args::{is_hold, reply, Args, HOLD_AT_MOST};

/// One connection's future; the loop below is its whole executor.
type Task = Pin<Box<dyn Future<Output = ()>>>;

fn main() -> ExitCode {
    let args = Args::parse("127.0.0.1:7003");
    // Drives the reactor on this thread while `run` waits.
    match async_io::block_on(run(args)) {
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
    let listener = upgrader.tcp_listener("lines", &args.listen)?;
    let addr = listener.local_addr()?;
    let mut listener = tracker.listen(Async::new(listener)?);
    let signals = SignalHandler::new(&shutdown)?.upgrader(upgrader.clone());
    upgrader.ready()?;
    println!("listening on {addr}");
    io::stdout().flush()?;

    let mut events = Box::pin(futures_lite::stream::unfold(signals, |mut signals| async {
        let event = signals.next().await;
        Some((event, signals))
    }));
    let mut stopped = Box::pin(shutdown.stopped());
    let mut tasks: Vec<Task> = Vec::new();
    let mut accept_pause: Option<Timer> = None;

    // The hand-rolled loop: on every wake-up, poll everything. Plain, and
    // fine for a few thousand connections.
    future::poll_fn(|cx| {
        while let Poll::Ready(Some(event)) = events.as_mut().poll_next(cx) {
            eprintln!("[{pid}] {event}");
        }
        if accept_pause
            .as_mut()
            .is_some_and(|pause| Pin::new(pause).poll(cx).is_pending())
        {
            // Backing off after an accept error.
        } else {
            accept_pause = None;
            // `Ok(None)` once draining: the listener is closed.
            while let Poll::Ready(accepted) = listener.poll_accept(cx) {
                match accepted {
                    Ok(Some((conn, _))) => tasks.push(Box::pin(async move {
                        if let Err(e) = serve(conn).await {
                            eprintln!("[{pid}] connection error: {e}");
                        }
                    })),
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("[{pid}] accept error: {e}");
                        let mut pause = Timer::after(Duration::from_millis(50));
                        let _ = Pin::new(&mut pause).poll(cx);
                        accept_pause = Some(pause);
                        break;
                    }
                }
            }
        }
        tasks.retain_mut(|task| task.as_mut().poll(cx).is_pending());
        // Done once drained: every connection gone, or the deadline.
        stopped.as_mut().poll(cx)
    })
    .await;
    eprintln!("[{pid}] stopped");
    Ok(())
}

async fn serve(conn: Tracked<Async<TcpStream>>) -> io::Result<()> {
    let mut conn = BufReader::new(conn);
    let mut line = String::new();
    while conn.read_line(&mut line).await? > 0 {
        if is_hold(&line) {
            conn.get_mut()
                .write_all(reply("holding").as_bytes())
                .await?;
            future::or(conn.get_ref().draining(), async {
                Timer::after(HOLD_AT_MOST).await;
            })
            .await;
        }
        conn.get_mut().write_all(reply(&line).as_bytes()).await?;
        line.clear();
    }
    Ok(())
}
