//! How long a drain takes to close 10,000 idle keep-alive connections (and
//! 1,000 and 5,000, for the growth): from the graceful trigger to the last
//! EOF the clients see, with an idle grace of zero. Side by side with a bare
//! loop of `shutdown(SHUT_WR)` over the same kind of connections: what the
//! kernel and this harness cost on their own.
//!
//! ```text
//! cargo bench --bench drain_idle [-- --sleeping-clients]
//! ```
//!
//! # How it measures
//!
//! This process is the server: a `Tracker` (idle grace zero, every other
//! setting the default) over a listener, and a task per connection on a
//! `smol::LocalExecutor` that echoes what it reads, as a keep-alive server
//! does. The client ends live in a helper process (this binary re-run with
//! `--clients`), since both ends of 10,000 connections would not fit under
//! the fd limit of 20,000. The helper connects, sends one request on each
//! connection and reads its answer, so every connection has served a
//! request and waits, idle, for the next; then it waits on all of them for
//! EOF.
//!
//! Once the tracker counts every connection idle and the helper says it is
//! waiting, the server takes a `CLOCK_MONOTONIC` timestamp and triggers a
//! graceful shutdown. The drain wakes each idle read, which sends our FIN
//! and lingers. The helper notes, on the same clock (it is shared across
//! processes), when each connection reads EOF, and reports the last EOF's
//! time and how many connections saw EOF and how many an error, over a pipe.
//! Every connection must see a clean EOF. Only then does it close its ends,
//! which ends our lingering closes.
//!
//! The *bare* rounds do the same without a tracker: the server keeps its
//! streams and, at the trigger, calls `shutdown(SHUT_WR)` on each in a
//! loop. That is the floor: on loopback, each FIN runs the client's side of
//! TCP inside our `shutdown(2)`, and the kernel's cost per socket grows
//! with the number of sockets (cache misses), so neither is linear from
//! 1,000 to 10,000; the tracked drain's ratio to the bare one shows what the
//! library adds, and 5,000 shows the growth past the first thousands.
//!
//! By default the helper polls without sleeping, as clients on other
//! machines would: a helper asleep in `epoll_wait` makes every FIN we send
//! wake it across CPUs, inside our `shutdown(2)`, a cost a remote client
//! never puts on the server. `--sleeping-clients` lets it sleep instead.
//! The helper closes its ends only after the last EOF for the same reason:
//! on loopback a close costs the closer the other side's TCP work too.
//!
//! Figures, each the median of `ROUNDS` rounds per size and kind, sizes and
//! kinds alternating: `drain_idle_last_eof` (trigger to the last EOF the
//! clients see; target at most 100 ms for 10,000), `drain_idle_stopped`
//! (trigger to the server's `stopped()`, after every linger, which the
//! clients end only once they have seen every EOF), the same for `bare`,
//! and ratios: 10,000 over 1,000 and over 5,000, tracked over bare.

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown as Direction, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::{future, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use seamless::conn::Config;
use seamless::{Shutdown, Tracker};

const SIZES: [usize; 3] = [1_000, 5_000, 10_000];
const ROUNDS: usize = 7;
const REQUEST: &[u8] = b"ping";
/// Generous bound for anything that should take a second at most.
const LONG: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sleeping = args.iter().any(|a| a == "--sleeping-clients");
    match args.get(1).map(String::as_str) {
        Some("--clients") => clients(args[2].parse().unwrap(), args[3].parse().unwrap(), sleeping),
        _ => bench(&args[0], sleeping),
    }
}

/// What ends the connections.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A graceful shutdown through the tracker.
    Drain,
    /// A loop of `shutdown(SHUT_WR)` over the raw streams.
    Bare,
}

/// Picks one of a sample's figures.
type Pick = fn(&Sample) -> Duration;

/// From the trigger: the last EOF the clients saw, and the server's end.
#[derive(Clone, Copy)]
struct Sample {
    last_eof: Duration,
    stopped: Duration,
}

fn bench(exe: &str, sleeping: bool) {
    let largest = SIZES.len() - 1;
    common::raise_fd_limit(SIZES[largest]);
    if sleeping {
        eprintln!("the client helper sleeps in epoll_wait between EOFs");
    }
    // Warm-up: async-io's reactor grows its tables once.
    run(exe, Kind::Drain, SIZES[largest], sleeping);
    // [size][kind]
    let mut samples: [[Vec<Sample>; 2]; SIZES.len()] = Default::default();
    let mut order: Vec<(usize, Kind)> = (0..SIZES.len())
        .flat_map(|size| [(size, Kind::Drain), (size, Kind::Bare)])
        .collect();
    for round in 0..ROUNDS {
        // A different order each round, so no size or kind always follows
        // the same one.
        order.rotate_left(1);
        for &(size, kind) in &order {
            let sample = run(exe, kind, SIZES[size], sleeping);
            eprintln!(
                "round {round}: {:>6} connections, {:<5}: last EOF after {:6.1} ms, stopped after {:6.1} ms",
                SIZES[size],
                name(kind),
                common::ms(sample.last_eof),
                common::ms(sample.stopped)
            );
            samples[size][kind as usize].push(sample);
        }
    }

    let median = |size: usize, kind: Kind, pick: Pick| {
        let values: Vec<Duration> = samples[size][kind as usize].iter().map(pick).collect();
        (
            common::median(&values),
            common::min(&values),
            common::max(&values),
        )
    };
    let picks: [(&str, Pick); 2] = [("last_eof", |s| s.last_eof), ("stopped", |s| s.stopped)];
    for (size, n) in SIZES.iter().enumerate() {
        let conns = format!("{}k_conns", n / 1000);
        for kind in [Kind::Drain, Kind::Bare] {
            for (what, pick) in picks {
                let (median, min, max) = median(size, kind, pick);
                println!(
                    "figure {}_{what}_{conns} {:.1} ms (min {:.1}, max {:.1})",
                    prefix(kind),
                    common::ms(median),
                    common::ms(min),
                    common::ms(max),
                );
            }
        }
    }
    for (what, pick) in picks {
        for kind in [Kind::Drain, Kind::Bare] {
            for (smaller, n) in SIZES[..largest].iter().enumerate() {
                let growth = median(largest, kind, pick).0.as_secs_f64()
                    / median(smaller, kind, pick).0.as_secs_f64();
                println!(
                    "ratio {}_{what}_{}k_over_{}k {growth:.2}",
                    prefix(kind),
                    SIZES[largest] / 1000,
                    n / 1000
                );
            }
        }
        for (size, n) in SIZES.iter().enumerate() {
            let added = median(size, Kind::Drain, pick).0.as_secs_f64()
                / median(size, Kind::Bare, pick).0.as_secs_f64();
            println!(
                "ratio drain_idle_{what}_over_bare_{}k_conns {added:.2}",
                n / 1000
            );
        }
    }
}

fn name(kind: Kind) -> &'static str {
    match kind {
        Kind::Drain => "drain",
        Kind::Bare => "bare",
    }
}

fn prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Drain => "drain_idle",
        Kind::Bare => "drain_idle_bare",
    }
}

/// One round: `n` idle connections, ended as `kind` says.
fn run(exe: &str, kind: Kind, n: usize, sleeping: bool) -> Sample {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    // A deep accept queue, so quick connects are never dropped.
    rustix::net::listen(&listener, 4096).expect("listen");
    let addr = listener.local_addr().expect("local_addr");
    let mut helper = Command::new(exe);
    helper.args(["--clients", &addr.to_string(), &n.to_string()]);
    if sleeping {
        helper.arg("--sleeping-clients");
    }
    let mut helper = helper
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the client helper");
    // The helper's lines, as they come.
    let (lines_tx, lines) = mpsc::channel();
    let waiting = Arc::new(AtomicBool::new(false));
    {
        let stdout = helper.stdout.take().unwrap();
        let waiting = waiting.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "waiting" {
                    waiting.store(true, Ordering::SeqCst);
                }
                let _ = lines_tx.send(line);
            }
        });
    }
    let listener = Async::new(listener).expect("async");
    let (triggered, stopped) = match kind {
        Kind::Drain => drain(listener, n, &waiting),
        Kind::Bare => bare(listener, n, &waiting),
    };

    let report = loop {
        let line = lines
            .recv_timeout(LONG)
            .expect("the client helper reports the EOFs");
        if let Some(report) = line.strip_prefix("eof ") {
            break report.to_owned();
        }
    };
    let status = helper.wait().expect("the client helper exits");
    assert!(status.success(), "the client helper failed: {status}");
    let last_eof = common::EofTally::check(&report, n);
    Sample {
        last_eof: Duration::from_nanos(last_eof.saturating_sub(triggered)),
        stopped: Duration::from_nanos(stopped - triggered),
    }
}

/// Serves `n` connections through a tracker and drains them once they are
/// idle and the helper waits. Returns the trigger's and `stopped()`'s times.
fn drain(listener: Async<TcpListener>, n: usize, waiting: &AtomicBool) -> (u64, u64) {
    let shutdown = Shutdown::new();
    let tracker = Tracker::with_config(&shutdown, Config::default().idle_grace(Duration::ZERO));
    let mut listener = tracker.listen(listener);
    let ex = smol::LocalExecutor::new();
    let times = smol::block_on(ex.run(async {
        let accepting = async {
            while let Some((stream, _)) = listener.accept().await.expect("accept") {
                ex.spawn(echo(stream)).detach();
            }
        };
        let trigger = async {
            until(|| waiting.load(Ordering::SeqCst) && tracker.counts().idle == n).await;
            let triggered = common::monotonic_ns();
            shutdown.graceful(LONG);
            shutdown.stopped().await;
            (triggered, common::monotonic_ns())
        };
        future::zip(accepting, trigger).await.1
    }));
    assert_eq!(tracker.counts().total, 0, "every connection closed");
    times
}

/// Serves `n` raw connections, and once the helper waits, sends a FIN on
/// each in a loop. Returns the trigger's time and when every connection
/// has ended.
fn bare(listener: Async<TcpListener>, n: usize, waiting: &AtomicBool) -> (u64, u64) {
    let ex = smol::LocalExecutor::new();
    smol::block_on(ex.run(async {
        let mut streams = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        while streams.len() < n {
            let (stream, _) = listener.accept().await.expect("accept");
            let stream = Rc::new(stream);
            streams.push(stream.clone());
            tasks.push(ex.spawn(async move { echo(&*stream).await }));
        }
        until(|| waiting.load(Ordering::SeqCst)).await;
        let triggered = common::monotonic_ns();
        for stream in &streams {
            let _ = stream.get_ref().shutdown(Direction::Write);
        }
        for task in tasks {
            task.await;
        }
        (triggered, common::monotonic_ns())
    }))
}

/// Waits until `ready` holds, looking every millisecond.
async fn until(ready: impl Fn() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < LONG,
            "the connections were not ready in {LONG:?}"
        );
        Timer::after(Duration::from_millis(1)).await;
    }
}

/// A keep-alive echo server's connection: answers each read until EOF.
async fn echo(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
    let mut buf = [0u8; 1024];
    while let Ok(n @ 1..) = stream.read(&mut buf).await {
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `--clients ADDR N [--sleeping-clients]`: opens `N` connections, sends a
/// request on each and reads its answer, says `waiting`, then waits for EOF
/// on all of them, reports `eof LAST_EOF_NS EOFS ERRORS`, and closes them.
fn clients(addr: SocketAddr, n: usize, sleeping: bool) {
    common::raise_fd_limit(n);
    let mut conns: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    for conn in &mut conns {
        conn.write_all(REQUEST).expect("send the request");
    }
    for conn in &mut conns {
        let mut answer = [0u8; REQUEST.len()];
        conn.read_exact(&mut answer).expect("read the answer");
    }

    let tally = common::EofTally::default();
    let ex = smol::LocalExecutor::new();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let mut conn = Async::new(conn).expect("async");
            let tally = &tally;
            ex.spawn(async move {
                tally.watch(&mut conn).await;
                conn // closed after the last EOF
            })
        })
        .collect();
    // Every read registered before the server is told we wait.
    while ex.try_tick() {}
    println!("waiting");
    std::io::stdout().flush().unwrap();
    let all_eofs = async {
        let mut conns = Vec::with_capacity(tasks.len());
        for task in tasks {
            conns.push(task.await);
        }
        conns
    };
    let poll_without_sleeping = async {
        // A task that is always ready keeps `block_on` polling the reactor
        // with a zero timeout instead of sleeping in it.
        if !sleeping {
            loop {
                future::yield_now().await;
            }
        }
        future::pending::<Vec<_>>().await
    };
    let timeout = async {
        Timer::after(LONG).await;
        Vec::new()
    };
    let conns = smol::block_on(ex.run(future::or(
        all_eofs,
        future::or(poll_without_sleeping, timeout),
    )));
    println!("{}", tally.report());
    std::io::stdout().flush().unwrap();
    drop(conns);
}
