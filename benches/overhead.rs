//! Overhead of `Tracked<S>` against the raw stream, measured side by side.
//!
//! Two echo servers run in one process on 127.0.0.1: one serves raw
//! `Async<TcpStream>`s, the other the same streams wrapped by a `Tracker`.
//! The same clients hit them in alternating rounds (raw, tracked, raw, ...)
//! so drift on a noisy machine hits both alike; we report the ratio of the
//! medians.
//!
//! ```text
//! cargo bench --bench overhead
//! ```

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use async_io::Async;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use seamless::{Shutdown, Tracker};

const CLIENTS: usize = 16;
const ROUND_TRIPS: usize = 2_000;
const MESSAGE: usize = 64;
const BULK: usize = 4 << 20;
const ROUNDS: usize = 7;

fn main() {
    let ex: &'static smol::Executor<'static> = Box::leak(Box::new(smol::Executor::new()));
    future::block_on(ex.run(async {
        let raw = start(ex, false);
        let tracked = start(ex, true);
        let (mut raw_rtt, mut tracked_rtt, mut raw_bulk, mut tracked_bulk) =
            (vec![], vec![], vec![], vec![]);
        for round in 0..ROUNDS {
            // Alternate which goes first, so neither always gets a warm cache.
            let order = if round % 2 == 0 {
                [(raw, false), (tracked, true)]
            } else {
                [(tracked, true), (raw, false)]
            };
            for (addr, is_tracked) in order {
                let rtt = round_trips(ex, addr).await;
                let bulk = bulk(addr).await;
                if is_tracked {
                    tracked_rtt.push(rtt);
                    tracked_bulk.push(bulk);
                } else {
                    raw_rtt.push(rtt);
                    raw_bulk.push(bulk);
                }
            }
        }
        report("request/response round trips/s", &raw_rtt, &tracked_rtt);
        report("bulk echo MiB/s", &raw_bulk, &tracked_bulk);
    }));
}

fn report(what: &str, raw: &[f64], tracked: &[f64]) {
    let (raw, tracked) = (median(raw), median(tracked));
    println!(
        "{what:<32} raw {raw:>10.0}   tracked {tracked:>10.0}   tracked/raw {:.3}",
        tracked / raw
    );
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// An echo server; `tracked` wraps its connections.
fn start(ex: &'static smol::Executor<'static>, tracked: bool) -> SocketAddr {
    let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
    let addr = listener.get_ref().local_addr().unwrap();
    let shutdown = Shutdown::new();
    let tracker = Tracker::new(&shutdown);
    ex.spawn(async move {
        let _shutdown = shutdown; // never triggered: steady-state cost only
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.get_ref().set_nodelay(true).unwrap();
            if tracked {
                ex.spawn(echo(tracker.track(stream))).detach();
            } else {
                ex.spawn(echo(stream)).detach();
            }
        }
    })
    .detach();
    addr
}

async fn echo(mut stream: impl futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = stream.read(&mut buf).await {
        if stream.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// Round trips per second over CLIENTS connections.
async fn round_trips(ex: &'static smol::Executor<'static>, addr: SocketAddr) -> f64 {
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            ex.spawn(async move {
                let mut stream = Async::<TcpStream>::connect(addr).await.unwrap();
                stream.get_ref().set_nodelay(true).unwrap();
                let mut buf = [7u8; MESSAGE];
                for _ in 0..ROUND_TRIPS {
                    stream.write_all(&buf).await.unwrap();
                    stream.read_exact(&mut buf).await.unwrap();
                }
            })
        })
        .collect();
    for client in clients {
        client.await;
    }
    (CLIENTS * ROUND_TRIPS) as f64 / start.elapsed().as_secs_f64()
}

/// MiB per second echoed through one connection.
async fn bulk(addr: SocketAddr) -> f64 {
    let stream = Async::<TcpStream>::connect(addr).await.unwrap();
    let (mut reader, mut writer) = (&stream, &stream);
    let start = Instant::now();
    let send = async {
        let chunk = vec![1u8; 64 * 1024];
        for _ in 0..BULK / chunk.len() {
            writer.write_all(&chunk).await.unwrap();
        }
    };
    let receive = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < BULK {
            got += reader.read(&mut buf).await.unwrap();
        }
    };
    future::zip(send, receive).await;
    let secs = start.elapsed().max(Duration::from_micros(1)).as_secs_f64();
    (BULK >> 20) as f64 / secs
}
