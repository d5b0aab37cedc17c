//! Heap bytes that tracking adds per connection, counted by a counting
//! global allocator over 10,000 connections, tracked against untracked.
//!
//! ```text
//! cargo bench --bench conn_heap
//! ```
//!
//! # How it measures
//!
//! The global allocator of this binary counts the bytes live (requested
//! sizes, not malloc's rounding) and the allocations made. 10,000
//! connections are opened to a listener in this process; their client ends
//! live in a helper process (this binary re-run with `--clients`), since
//! both ends would not fit under the fd limit of 20,000. Once all are
//! accepted (as plain `std` streams, into a vector allocated beforehand),
//! the counters are read, the connections are set up the way a server holds
//! them, and the counters are read again. Three ways of holding them:
//!
//! - `held`: the streams, `Async<TcpStream>` or `Tracked<Async<TcpStream>>`,
//!   kept in a vector of exactly 10,000 allocated in between. Tracking costs
//!   what it allocates (the per-connection state, the registry's slot) and
//!   the size `Tracked` adds to the stream, since wherever a server keeps
//!   its streams (a vector, a task) they are on the heap. The target, at
//!   most 128 bytes, is on this figure.
//! - `allocated`: the same, but the vector allocated before the first
//!   count: what tracking allocates, without the stream's own growth.
//! - `in_task`: each stream served by a task of its own on a
//!   `smol::LocalExecutor`, every task polled until it waits in `read`, as
//!   an idle keep-alive connection does. An `async fn` keeps its argument
//!   and the local it moves into apart, so there the stream's growth counts
//!   twice.
//!
//! The same setup runs without tracking and with it, in alternating rounds
//! (each with fresh connections, after a warm-up of each, which grows
//! async-io's reactor once), and `tracking_adds` is the difference, per
//! connection (allocator counts are exact, so rounds agree to the byte).
//!
//! Output lines are `figure NAME VALUE UNIT`.

#[path = "common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicIsize, Ordering};

use async_io::Async;
use futures_lite::{AsyncRead, AsyncReadExt};
use seamless::{Shutdown, Tracked, Tracker};

const CONNECTIONS: usize = 10_000;
const ROUNDS: usize = 3;

/// Counts live bytes and allocations, then defers to the system allocator.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to `System` with the same arguments, so
// `System`'s guarantees hold; the counters are plain atomics on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc_zeroed`'s contract.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `realloc`'s contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live bytes and live allocations.
fn live() -> (isize, isize) {
    (
        LIVE_BYTES.load(Ordering::SeqCst),
        ALLOCATIONS.load(Ordering::SeqCst),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--clients") => hold_clients(args[2].parse().unwrap(), args[3].parse().unwrap()),
        _ => bench(&args[0]),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Hold {
    Held,
    Allocated,
    InTask,
}

/// Per connection: bytes and allocations, one entry per round.
#[derive(Default)]
struct Samples {
    bytes: Vec<f64>,
    allocations: Vec<f64>,
}

fn bench(exe: &str) {
    common::raise_fd_limit(CONNECTIONS);
    for hold in [Hold::Held, Hold::Allocated, Hold::InTask] {
        let name = match hold {
            Hold::Held => "held",
            Hold::Allocated => "allocated",
            Hold::InTask => "in_task",
        };
        // Warm-up: async-io's reactor grows its tables once.
        measure(exe, hold, false);
        measure(exe, hold, true);
        let (mut raw, mut tracked) = (Samples::default(), Samples::default());
        for round in 0..ROUNDS {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for is_tracked in order {
                let (bytes, allocations) = measure(exe, hold, is_tracked);
                let samples = if is_tracked { &mut tracked } else { &mut raw };
                samples.bytes.push(bytes);
                samples.allocations.push(allocations);
            }
            eprintln!(
                "{name} round {round}: raw {:.1} B, tracked {:.1} B per connection",
                raw.bytes[round], tracked.bytes[round]
            );
        }
        let added: Vec<f64> = (0..ROUNDS)
            .map(|i| tracked.bytes[i] - raw.bytes[i])
            .collect();
        let added_allocations: Vec<f64> = (0..ROUNDS)
            .map(|i| tracked.allocations[i] - raw.allocations[i])
            .collect();
        let conns = format!("{}k_conns", CONNECTIONS / 1000);
        println!(
            "figure conn_heap_raw_{name}_{conns} {:.1} B/conn",
            common::median(&raw.bytes)
        );
        println!(
            "figure conn_heap_tracked_{name}_{conns} {:.1} B/conn",
            common::median(&tracked.bytes)
        );
        println!(
            "figure conn_heap_tracking_adds_{name}_{conns} {:.1} B/conn (rounds {:.1}..{:.1})",
            common::median(&added),
            common::min(&added),
            common::max(&added)
        );
        println!(
            "figure conn_heap_tracking_adds_allocations_{name}_{conns} {:.2} allocs/conn",
            common::median(&added_allocations)
        );
    }
    println!(
        "figure tracked_stream_size_growth {} B",
        size_of::<Tracked<Async<TcpStream>>>() - size_of::<Async<TcpStream>>()
    );
}

/// Per connection: heap bytes and allocations live once `CONNECTIONS`
/// accepted connections are set up as `hold` says.
fn measure(exe: &str, hold: Hold, tracked: bool) -> (f64, f64) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    // A deep accept queue, so 10,000 quick connects are never dropped.
    rustix::net::listen(&listener, 4096).expect("listen");
    let addr = listener.local_addr().expect("local_addr");
    let mut clients = Command::new(exe)
        .args(["--clients", &addr.to_string(), &CONNECTIONS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the client helper");
    let mut accepted = Vec::with_capacity(CONNECTIONS);
    while accepted.len() < CONNECTIONS {
        accepted.push(listener.accept().expect("accept").0);
    }
    let mut line = String::new();
    BufReader::new(clients.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "connected", "the client helper failed");

    // Everything a service has before its first connection.
    let shutdown = Shutdown::new();
    let tracker = Tracker::new(&shutdown);
    let ex = smol::LocalExecutor::new();
    let mut held_raw: Vec<Async<TcpStream>> = Vec::new();
    let mut held_tracked: Vec<Tracked<Async<TcpStream>>> = Vec::new();

    // Room for exactly the streams of this round's kind.
    let reserve = |raw: &mut Vec<_>, held: &mut Vec<_>| match tracked {
        true => held.reserve_exact(CONNECTIONS),
        false => raw.reserve_exact(CONNECTIONS),
    };
    if hold == Hold::Allocated {
        reserve(&mut held_raw, &mut held_tracked);
    }
    let (bytes_before, allocations_before) = live();
    if hold == Hold::Held {
        reserve(&mut held_raw, &mut held_tracked);
    }
    match hold {
        Hold::Held | Hold::Allocated if tracked => {
            for stream in accepted.drain(..) {
                held_tracked.push(tracker.track(Async::new(stream).expect("async")));
            }
        }
        Hold::Held | Hold::Allocated => {
            for stream in accepted.drain(..) {
                held_raw.push(Async::new(stream).expect("async"));
            }
        }
        Hold::InTask => {
            for stream in accepted.drain(..) {
                let stream = Async::new(stream).expect("async");
                if tracked {
                    ex.spawn(idle(tracker.track(stream))).detach();
                } else {
                    ex.spawn(idle(stream)).detach();
                }
            }
            // Each task runs until it waits in `read`.
            while ex.try_tick() {}
        }
    }
    let (bytes_after, allocations_after) = live();
    if tracked {
        assert_eq!(
            tracker.counts().total,
            CONNECTIONS,
            "every connection tracked"
        );
    }

    // Our ends first, so the helper's exit leaves no TIME_WAIT on its ports.
    drop((ex, held_raw, held_tracked));
    drop(clients.stdin.take());
    clients.wait().expect("the client helper exits");

    let n = CONNECTIONS as f64;
    (
        (bytes_after - bytes_before) as f64 / n,
        (allocations_after - allocations_before) as f64 / n,
    )
}

/// An idle keep-alive connection: waits for a request that never comes.
async fn idle(mut stream: impl AsyncRead + Unpin) {
    let mut buf = [0u8; 1];
    let _ = stream.read(&mut buf).await;
}

/// `--clients ADDR N`: connects `N` times and holds the connections until
/// stdin closes.
fn hold_clients(addr: SocketAddr, n: usize) {
    common::raise_fd_limit(n);
    let conns: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    println!("connected");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    drop(conns);
}
