//! Accept churn through a `TrackedListener` against a raw accept loop, side
//! by side: connections per second when every connection is opened, carries
//! one request and its response, and is closed.
//!
//! ```text
//! cargo bench --bench accept_churn
//! ```
//!
//! # How it measures
//!
//! Two servers share one single-threaded executor (a `smol::Executor` run
//! by `smol::block_on` on a thread of its own, so that thread also drives
//! async-io's reactor, as a smol server does): one accepts from an `Async<TcpListener>` directly,
//! the other through `Tracker::listen`. Each serves every connection in a
//! task of its own: read a 64-byte request, write it back, read until the
//! client's EOF, drop the stream. Under the tracker that is the whole life
//! of a tracked connection: registered New, Busy on the request, Idle after
//! the response, unregistered on drop.
//!
//! The clients run on another thread, so that their work does not share
//! the servers' thread: `CLIENTS` tasks, each connecting, sending the request,
//! reading the response and closing, `CONNS_PER_CLIENT` times. The client
//! closes first, so its ends go to TIME_WAIT; each client task connects from
//! its own loopback address (127.0.0.2, .3, ...), so that the ephemeral
//! ports of one address are never all taken. Rounds alternate raw and
//! tracked (and which goes first), after one warm-up round of each, so drift
//! on a noisy machine hits both alike.
//!
//! Output: `figure` lines for each side's median rate, and
//! `ratio accept_churn_tracked_over_raw`, the ratio of the medians (target:
//! at least 0.95). Per-round rates go to stderr.

#[path = "common/mod.rs"]
mod common;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Instant;

use async_io::Async;
use futures_lite::{future, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use seamless::{Shutdown, Tracker};

const CLIENTS: usize = 16;
const CONNS_PER_CLIENT: usize = 500;
const ROUNDS: usize = 11;
const REQUEST: usize = 64;

fn main() {
    let ex: &'static smol::Executor<'static> = Box::leak(Box::new(smol::Executor::new()));
    let raw = serve_raw(ex);
    let tracked = serve_tracked(ex);
    std::thread::Builder::new()
        .name("servers".into())
        .spawn(|| smol::block_on(ex.run(future::pending::<()>())))
        .expect("start the servers' thread");

    // Warm-up: connection setup paths, allocator, page cache.
    churn(raw);
    churn(tracked);

    let (mut raw_rates, mut tracked_rates) = (vec![], vec![]);
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for is_tracked in order {
            if is_tracked {
                tracked_rates.push(churn(tracked));
            } else {
                raw_rates.push(churn(raw));
            }
        }
        eprintln!(
            "round {round}: raw {:.0} conn/s, tracked {:.0} conn/s, tracked/raw {:.3}",
            raw_rates[round],
            tracked_rates[round],
            tracked_rates[round] / raw_rates[round]
        );
    }
    let (raw, tracked) = (common::median(&raw_rates), common::median(&tracked_rates));
    println!("figure accept_churn_raw {raw:.0} conn/s");
    println!("figure accept_churn_tracked {tracked:.0} conn/s");
    println!("ratio accept_churn_tracked_over_raw {:.3}", tracked / raw);
}

fn listener() -> (Async<TcpListener>, SocketAddr) {
    let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
    // A deep accept queue, so a burst of connects is never dropped.
    rustix::net::listen(listener.get_ref(), 4096).expect("listen");
    let addr = listener.get_ref().local_addr().expect("local_addr");
    (listener, addr)
}

fn serve_raw(ex: &'static smol::Executor<'static>) -> SocketAddr {
    let (listener, addr) = listener();
    ex.spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            ex.spawn(serve(stream)).detach();
        }
    })
    .detach();
    addr
}

fn serve_tracked(ex: &'static smol::Executor<'static>) -> SocketAddr {
    let (listener, addr) = listener();
    let shutdown = Shutdown::new();
    let tracker = Tracker::new(&shutdown);
    let mut listener = tracker.listen(listener);
    ex.spawn(async move {
        let _shutdown = shutdown; // never triggered: steady-state cost only
        while let Some((stream, _)) = listener.accept().await.expect("accept") {
            ex.spawn(serve(stream)).detach();
        }
    })
    .detach();
    addr
}

/// One request, its response, then the client's EOF.
async fn serve(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
    let mut buf = [0u8; REQUEST];
    if stream.read_exact(&mut buf).await.is_err() {
        return;
    }
    if stream.write_all(&buf).await.is_err() {
        return;
    }
    while let Ok(1..) = stream.read(&mut buf).await {}
}

/// Connections per second through the server at `addr`.
fn churn(addr: SocketAddr) -> f64 {
    let ex = smol::LocalExecutor::new();
    let start = Instant::now();
    smol::block_on(ex.run(async {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let from = Ipv4Addr::new(127, 0, 0, 2 + client as u8);
                ex.spawn(async move {
                    for _ in 0..CONNS_PER_CLIENT {
                        let mut stream = connect(from, addr).await.expect("connect");
                        let mut buf = [7u8; REQUEST];
                        stream.write_all(&buf).await.expect("send the request");
                        stream
                            .read_exact(&mut buf)
                            .await
                            .expect("read the response");
                    }
                })
            })
            .collect();
        for client in clients {
            client.await;
        }
    }));
    (CLIENTS * CONNS_PER_CLIENT) as f64 / start.elapsed().as_secs_f64()
}

/// Connects to `addr` from `from` (any port), without blocking.
async fn connect(from: Ipv4Addr, addr: SocketAddr) -> io::Result<Async<TcpStream>> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let socket = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    match rustix::net::bind(&socket, &SocketAddrV4::new(from, 0)) {
        // Beyond Linux, 127.0.0.1 may be the only loopback address.
        Ok(()) | Err(rustix::io::Errno::ADDRNOTAVAIL) => {}
        Err(e) => return Err(e.into()),
    }
    match rustix::net::connect(&socket, &addr) {
        Ok(()) | Err(rustix::io::Errno::INPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let stream = Async::new(TcpStream::from(socket))?;
    stream.writable().await?;
    match stream.get_ref().take_error()? {
        Some(e) => Err(e),
        None => Ok(stream),
    }
}
