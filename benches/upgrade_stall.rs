//! How long an upgrade stalls the executor that runs it, with 10,000 open
//! connections, with a small heap and with a 1 GiB heap, side by side.
//!
//! ```text
//! cargo bench --bench upgrade_stall
//! ```
//!
//! # How it measures
//!
//! One process serves as the old generation: an `Upgrader` with a listener,
//! 10,000 accepted connections held open (their client ends live in a helper
//! process, started by re-running this binary, because both ends would not
//! fit under the fd limit of 20,000), and, in the big-heap rounds, 1 GiB of
//! heap with every page written, so that it is really mapped.
//!
//! Each upgrade runs on a single-threaded executor (`async_io::block_on`)
//! next to a *ticker*: a task that sleeps on a 250 µs interval timer and
//! records how late each tick comes, i.e. the largest gap between two
//! consecutive wake-ups beyond the period. Whatever keeps the executor
//! thread from running a ready task (a `fork` copying page tables, a wait
//! for the child's `exec`, a blocking `waitpid`) shows up there. The ticker
//! starts before the upgrade's first poll. Per upgrade we keep:
//!
//! - `upgrade_stall`: the ticker's largest gap. It also counts scheduling
//!   latency: on a busy machine the executor thread can wake late while the
//!   child (which needs a CPU to start) and other processes run.
//! - `upgrade_longest_poll`: the longest single poll of the upgrade future,
//!   wall-clock, and `..._cpu`: the executor thread's CPU time in that poll
//!   (which leaves out preemption). This is the time the upgrade holds the
//!   executor in one go.
//! - `idle_gap`: the same ticker alone for as long, right after: the
//!   machine's own noise.
//!
//! The next generation is this binary run with `--child`, which exits at
//! once: the upgrade then fails with "exited before it was ready", so the
//! old generation keeps serving and can be upgraded again, and each upgrade
//! does the whole spawn, wait and reap. A successful upgrade does the same
//! spawn work, then starts a drain. The heap sizes alternate round by
//! round, so drift on a noisy machine hits both alike.
//!
//! Output lines are `figure NAME VALUE UNIT`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::pin;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_io::Async;
use futures_lite::future;
use seamless::handoff::{Options, UpgradeError, Upgrader};
use seamless::Shutdown;

const CONNECTIONS: usize = 10_000;
const BIG_HEAP: usize = 1 << 30;
const ROUNDS: usize = 5;
const UPGRADES_PER_ROUND: usize = 4;
/// The ticker's period.
const TICK: Duration = Duration::from_micros(250);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        // The next generation: gone at once.
        Some("--child") => std::process::exit(0),
        Some("--clients") => hold_clients(args[2].parse().unwrap(), args[3].parse().unwrap()),
        _ => bench(&args[0]),
    }
}

/// Per heap size: one entry per upgrade.
#[derive(Default)]
struct Samples {
    stall: Vec<Duration>,
    longest_poll: Vec<Duration>,
    longest_poll_cpu: Vec<Duration>,
    duration: Vec<Duration>,
    idle_gap: Vec<Duration>,
}

fn bench(exe: &str) {
    raise_fd_limit();
    let shutdown = Shutdown::new();
    let options = Options::default()
        .args([exe, "--child"])
        .ready_timeout(Duration::from_secs(30));
    let upgrader = Upgrader::new(&shutdown, options).expect("upgrader");
    let listener = upgrader.tcp_listener("bench", "127.0.0.1:0").unwrap();
    // A deep accept queue, so 10,000 quick connects are never dropped.
    rustix::net::listen(&listener, 4096).unwrap();
    let addr = listener.local_addr().unwrap();
    upgrader.ready().unwrap();

    let (_clients, conns) = connect(exe, listener, addr);
    eprintln!("holding {} connections", conns.len());

    let (mut small, mut big) = (Samples::default(), Samples::default());
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for big_heap in order {
            let heap = big_heap.then(touched_heap);
            let samples = if big_heap { &mut big } else { &mut small };
            for _ in 0..UPGRADES_PER_ROUND {
                measure_upgrade(&upgrader, samples);
            }
            drop(heap);
        }
    }
    drop(conns);
    report("small_heap", &small);
    report("1GiB", &big);
}

/// One upgrade next to the ticker, then the ticker alone for as long.
fn measure_upgrade(upgrader: &Upgrader, samples: &mut Samples) {
    let mut longest_poll = (Duration::ZERO, Duration::ZERO);
    let started = Instant::now();
    let (outcome, stall) =
        async_io::block_on(ticking(timed_polls(upgrader.upgrade(), &mut longest_poll)));
    let (longest_poll, longest_poll_cpu) = longest_poll;
    let took = started.elapsed();
    match outcome {
        Err(UpgradeError::Exited(status)) if status.success() => {}
        other => panic!("the upgrade should fail with the child's exit: {other:?}"),
    }
    let (_, idle_gap) = async_io::block_on(ticking(async_io::Timer::after(took)));
    samples.stall.push(stall);
    samples.longest_poll.push(longest_poll);
    samples.longest_poll_cpu.push(longest_poll_cpu);
    samples.duration.push(took);
    samples.idle_gap.push(idle_gap);
}

/// Runs `work` next to a ticker; returns its output and the largest gap
/// between two consecutive ticks, beyond the ticker's period.
///
/// The ticker sleeps on a timer between ticks, like an executor waiting for
/// I/O, so the gap is what a task ready to run would have waited.
async fn ticking<T>(work: impl std::future::Future<Output = T>) -> (T, Duration) {
    let mut largest = Duration::ZERO;
    // Started before the work's first poll, which may be the one that stalls.
    let mut timer = async_io::Timer::interval(TICK);
    let mut last = Instant::now();
    let ticker = async {
        loop {
            futures_lite::StreamExt::next(&mut timer).await;
            let now = Instant::now();
            largest = largest.max((now - last).saturating_sub(TICK));
            last = now;
        }
    };
    let output = future::or(work, ticker).await;
    // The last stretch, up to the work's completion.
    largest = largest.max((Instant::now() - last).saturating_sub(TICK));
    (output, largest)
}

/// Polls `work`, recording the longest single poll: wall-clock time, and
/// the CPU time of the executor thread (which leaves out preemption).
async fn timed_polls<T>(
    work: impl std::future::Future<Output = T>,
    longest: &mut (Duration, Duration),
) -> T {
    let mut work = pin!(work);
    future::poll_fn(|cx| {
        let (started, cpu_started) = (Instant::now(), thread_cpu_time());
        let poll = work.as_mut().poll(cx);
        longest.0 = longest.0.max(started.elapsed());
        longest.1 = longest.1.max(thread_cpu_time().saturating_sub(cpu_started));
        poll
    })
    .await
}

fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// 1 GiB of heap, every page written so it is mapped.
fn touched_heap() -> Vec<u8> {
    let mut heap = vec![0u8; BIG_HEAP];
    for page in heap.chunks_mut(4096) {
        page[0] = 1;
    }
    heap
}

/// Starts the helper that holds the client ends, and accepts its
/// connections.
fn connect(
    exe: &str,
    listener: TcpListener,
    addr: SocketAddr,
) -> (std::process::Child, Vec<Async<TcpStream>>) {
    let mut clients = Command::new(exe)
        .args(["--clients", &addr.to_string(), &CONNECTIONS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the client helper");
    let listener = Async::new(listener).unwrap();
    let conns = async_io::block_on(async {
        let mut conns = Vec::with_capacity(CONNECTIONS);
        while conns.len() < CONNECTIONS {
            let (stream, _) = listener.accept().await.expect("accept");
            conns.push(stream);
        }
        conns
    });
    let mut line = String::new();
    BufReader::new(clients.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "connected", "the client helper failed");
    (clients, conns)
}

/// `--clients ADDR N`: connects `N` times and holds the connections until
/// stdin closes (the benchmark exited).
fn hold_clients(addr: SocketAddr, n: usize) {
    raise_fd_limit();
    let conns: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    println!("connected");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    drop(conns);
}

fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, raised).expect("raise the fd limit");
    let current = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    assert!(
        current > CONNECTIONS as u64 + 100,
        "need an fd limit above {CONNECTIONS}, have {current}"
    );
}

fn report(heap: &str, samples: &Samples) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let conns = format!("{}k_conns", CONNECTIONS / 1000);
    let figures = [
        ("upgrade_stall_max_ms", max(&samples.stall)),
        ("upgrade_stall_median_ms", median(&samples.stall)),
        ("upgrade_stall_min_ms", min(&samples.stall)),
        ("upgrade_longest_poll_max_ms", max(&samples.longest_poll)),
        (
            "upgrade_longest_poll_cpu_max_ms",
            max(&samples.longest_poll_cpu),
        ),
        (
            "upgrade_longest_poll_cpu_median_ms",
            median(&samples.longest_poll_cpu),
        ),
        ("upgrade_duration_median_ms", median(&samples.duration)),
        ("idle_gap_max_ms", max(&samples.idle_gap)),
    ];
    for (name, value) in figures {
        println!("figure {name}_{heap}_{conns} {:.3} ms", ms(value));
    }
    println!(
        "figure upgrades_measured_{heap}_{conns} {} count",
        samples.stall.len()
    );
}

fn max(values: &[Duration]) -> Duration {
    values.iter().copied().max().unwrap_or_default()
}

fn min(values: &[Duration]) -> Duration {
    values.iter().copied().min().unwrap_or_default()
}

fn median(values: &[Duration]) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}
