//! A UDP echo service with graceful shutdown and hot restart, on smol.
//!
//! ```text
//! cargo run --example udp -- --listen 127.0.0.1:7002 --pid-file /tmp/udp.pid
//! echo hello | nc -u -w1 127.0.0.1 7002      # "<pid> hello"
//! kill -HUP $(cat /tmp/udp.pid)               # hot restart: a new pid answers
//! ```
//!
//! UDP has no connections to track, and needs nothing more than the
//! coordinator. The drain pattern:
//!
//! 1. **Stop reading** when draining starts: race each `recv_from` against
//!    [`Shutdown::draining`]. A `recv_from` that loses the race has taken
//!    nothing, so no datagram is lost: it stays queued for whoever reads the
//!    socket next.
//! 2. **Keep the socket** for replies: it is shared (`Arc`) by the datagrams
//!    in flight, and closes when the last of them is done.
//! 3. **Let each datagram in flight finish**: each holds a
//!    [`Shutdown::guard`], and [`Shutdown::stopped`] waits for them (or the
//!    deadline).
//!
//! Across a hot restart both generations hold the very same socket
//! (`upgrader.udp_socket` passes it on), so the kernel hands each datagram
//! to whichever generation reads first. The old one stops reading once its
//! successor is ready, and from then on the new one gets them all.
//!
//! A datagram `hold` is answered at once (`<pid> holding`) and again once
//! this generation drains: one in flight across a hot restart.

#[path = "common/args.rs"]
mod args;

use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::Arc;

use futures_lite::future;
use seamless::conn::Async;
use seamless::signals::SignalHandler;
use seamless::Upgrader;

use args::{is_hold, reply, Args, HOLD_AT_MOST};

fn main() -> ExitCode {
    let args = Args::parse("127.0.0.1:7002");
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
    let socket = Arc::new(Async::new(upgrader.udp_socket("datagrams", &args.listen)?)?);
    let addr = socket.get_ref().local_addr()?;
    let mut signals = SignalHandler::new(&shutdown)?.upgrader(upgrader.clone());
    upgrader.ready()?;
    println!("listening on {addr}");
    io::stdout().flush()?;
    smol::spawn(async move {
        loop {
            eprintln!("[{pid}] {}", signals.next().await);
        }
    })
    .detach();

    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // 1. Stop reading once draining: `None` wins only if nothing arrived.
        let received = future::or(async { Some(socket.recv_from(&mut buf).await) }, async {
            shutdown.draining().await;
            None
        })
        .await;
        let (n, peer) = match received {
            Some(Ok(received)) => received,
            Some(Err(e)) => {
                eprintln!("[{pid}] recv error: {e}");
                continue;
            }
            None => break,
        };
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        // 3. The datagram in flight holds off `stopped`...
        let guard = shutdown.guard();
        // 2. ...and keeps the socket for its reply.
        let socket = socket.clone();
        smol::spawn(async move {
            if is_hold(&line) {
                let _ = socket.send_to(reply("holding").as_bytes(), peer).await;
                future::or(guard.shutdown().draining(), async {
                    async_io::Timer::after(HOLD_AT_MOST).await;
                })
                .await;
            }
            if let Err(e) = socket.send_to(reply(&line).as_bytes(), peer).await {
                eprintln!("[{pid}] send error: {e}");
            }
            drop(guard);
        })
        .detach();
    }
    shutdown.stopped().await;
    eprintln!("[{pid}] stopped");
    Ok(())
}
