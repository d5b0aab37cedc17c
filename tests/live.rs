//! The live handoff, end to end on the `http` example binary: idle
//! keep-alive connections move, alive, to the next generation at a hot
//! restart instead of being closed.
//!
//! - Keep-alive clients that pause between requests, never check their
//!   connection before reusing it and never retry lose nothing across 10
//!   restarts, and none of them reconnects.
//! - The same with 60 restarts 0.25 s apart, half the clients at full speed.
//! - A request half-sent before a restart is answered once, in full; two
//!   pipelined requests at the switch are both answered, once, in order.
//! - A connection busy past the old generation's probation moves on once
//!   its response is out, and keeps serving, also through a generation
//!   that is itself draining.
//! - Without the opt-in, or for a connection that declines, an idle
//!   connection is closed as before; a connection's state goes with it.
//! - Over 50 restarts every generation's fds stay flat, and no socket is
//!   left half-open.
//!
//! Clients are plain blocking sockets on threads, bounded in count and
//! time. Set `SEAMLESS_TEST_LOG=1` to see the servers' logs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use seamless_test_support::build;
use seamless_test_support::procs::{
    alive, become_subreaper, connection_fds, fd_count, poll, signal, tcp_unread, wait_gone,
};

/// Generous bound for anything that should take milliseconds.
const LONG: Duration = Duration::from_secs(30);

/// Example `name`'s binary, built with this test's profile.
fn example_binary(name: &str) -> PathBuf {
    build::example_binary(env!("CARGO_MANIFEST_DIR"), name)
}

fn http_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| example_binary("http"))
}

/// The `http` example and every generation it turns into.
struct Service {
    addr: SocketAddr,
    pid_file: PathBuf,
    pids: Mutex<BTreeSet<u32>>,
    _dir: tempfile::TempDir,
}

impl Service {
    fn start(args: &[&str]) -> Service {
        become_subreaper();
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("http.pid");
        let echo = std::env::var_os("SEAMLESS_TEST_LOG").is_some();
        let mut child = Command::new(http_binary())
            .args(["--listen", "127.0.0.1:0", "--probation-ms", "300"])
            .arg("--pid-file")
            .arg(&pid_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if echo {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start the http example");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("its first line");
        // Every later generation writes here too: keep reading.
        std::thread::spawn(move || io::copy(&mut stdout, &mut io::sink()));
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let first = child.id();
        // Reaped by `alive`, as every later generation is (we subreap).
        drop(child);
        let service = Service {
            addr,
            pid_file,
            pids: Mutex::new(BTreeSet::from([first])),
            _dir: dir,
        };
        service.wait_for_pid(|pid| pid == first);
        service
    }

    fn current(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn wait_for_pid(&self, want: impl Fn(u32) -> bool) -> u32 {
        let pid = poll(LONG, || self.current().filter(|&pid| want(pid)))
            .expect("the pid file never named the generation");
        self.pids.lock().unwrap().insert(pid);
        pid
    }

    /// SIGHUP to the serving generation; returns its successor, once ready.
    fn restart(&self) -> u32 {
        let old = self.current().expect("a serving generation");
        signal(old, Signal::HUP).expect("SIGHUP");
        self.wait_for_pid(|pid| pid != old)
    }

    /// Stops the serving generation; every generation must then exit.
    fn stop(self) {
        let pid = self.current().expect("a serving generation");
        signal(pid, Signal::TERM).expect("SIGTERM");
        for &pid in self.pids.lock().unwrap().iter() {
            assert!(wait_gone(pid, LONG), "generation {pid} is still running");
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for &pid in self.pids.lock().unwrap().iter() {
                let _ = signal(pid, Signal::KILL);
            }
        }
    }
}

/// One HTTP/1.1 response, as far as these tests read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Response {
    generation: u32,
    target: String,
    state: Option<String>,
    close: bool,
}

/// A keep-alive client on one connection, made once.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(LONG))?;
        Ok(Client {
            reader: BufReader::new(stream),
        })
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    fn get(&mut self, target: &str) -> io::Result<Response> {
        self.send(format!("GET {target} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())?;
        self.response()
    }

    /// Reads one response; EOF before it is an error.
    fn response(&mut self) -> io::Result<Response> {
        let mut head = Vec::new();
        let eof = || io::Error::new(io::ErrorKind::UnexpectedEof, "EOF before a response");
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(eof());
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_owned());
        }
        let status = head.first().ok_or_else(eof)?;
        if !status.starts_with("HTTP/1.1 200 ") {
            return Err(io::Error::other(format!("status line {status:?}")));
        }
        let header = |name: &str| {
            head.iter()
                .find_map(|h| h.strip_prefix(name)?.strip_prefix(": ").map(str::to_owned))
        };
        let length: usize = header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(Response {
            generation: header("x-generation")
                .and_then(|g| g.parse().ok())
                .ok_or_else(|| io::Error::other("no x-generation"))?,
            target: header("x-target").unwrap_or_default(),
            state: header("x-state"),
            close: header("connection").is_some_and(|c| c == "close"),
        })
    }

    /// Whether the server has closed the connection (EOF), without a reset.
    fn sees_clean_eof(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(self.reader.read_to_end(&mut rest), Ok(0)) && rest.is_empty()
    }
}

/// What the keep-alive clients of a run did.
#[derive(Debug, Default)]
struct Tally {
    requests: AtomicUsize,
    failed: AtomicUsize,
    connects: AtomicUsize,
    /// Requests answered, by generation.
    generations: Mutex<BTreeMap<u32, usize>>,
    errors: Mutex<Vec<String>>,
}

/// `count` keep-alive clients, each on one connection it never replaces:
/// a failed request is counted and ends the client (no retry). Client `i`
/// pauses a pseudo-random 0–1 s between requests if `paused(i)`, else none.
struct Clients {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    fn start(addr: SocketAddr, count: usize, paused: impl Fn(usize) -> bool) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let threads = (0..count)
            .map(|i| {
                let (stop, tally, paused) = (stop.clone(), tally.clone(), paused(i));
                std::thread::spawn(move || run_client(addr, i, paused, &stop, &tally))
            })
            .collect();
        Clients {
            stop,
            tally,
            threads,
        }
    }

    /// Waits until `generation` has answered at least `n` requests.
    fn wait_answered_by(&self, generation: u32, n: usize) {
        let seen = poll(LONG, || {
            let answered = self.tally.generations.lock().unwrap();
            (answered.get(&generation).copied().unwrap_or(0) >= n).then_some(())
        });
        assert!(seen.is_some(), "{generation} did not answer {n} requests");
    }

    fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("client thread");
        }
        self.tally
    }
}

fn run_client(addr: SocketAddr, id: usize, paused: bool, stop: &AtomicBool, tally: &Tally) {
    let mut client = match Client::connect(addr) {
        Ok(client) => client,
        Err(e) => {
            tally.failed.fetch_add(1, Ordering::SeqCst);
            tally
                .errors
                .lock()
                .unwrap()
                .push(format!("client {id}: connect: {e}"));
            return;
        }
    };
    tally.connects.fetch_add(1, Ordering::SeqCst);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ id as u64;
    // Bounded in count as well as by the stop flag.
    for i in 0..20_000 {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        tally.requests.fetch_add(1, Ordering::SeqCst);
        match client.get(&format!("/?client={id}&n={i}")) {
            Ok(response) if !response.close => {
                *tally
                    .generations
                    .lock()
                    .unwrap()
                    .entry(response.generation)
                    .or_default() += 1;
            }
            outcome => {
                tally.failed.fetch_add(1, Ordering::SeqCst);
                tally
                    .errors
                    .lock()
                    .unwrap()
                    .push(format!("client {id} request {i}: {outcome:?}"));
                return;
            }
        }
        if paused {
            // The client's think time: part of the load, not a wait.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(seed % 1000));
        }
    }
}

fn assert_nothing_lost(tally: &Tally, clients: usize) {
    let errors = tally.errors.lock().unwrap();
    assert_eq!(
        tally.failed.load(Ordering::SeqCst),
        0,
        "failed requests: {:?}",
        &errors[..errors.len().min(10)]
    );
    assert_eq!(
        tally.connects.load(Ordering::SeqCst),
        clients,
        "every client connected once and never again"
    );
}

#[test]
fn paused_keepalive_clients_lose_nothing_across_restarts() {
    const CLIENTS: usize = 100;
    const RESTARTS: usize = 10;
    let service = Service::start(&[]);
    let first = service.current().unwrap();
    let clients = Clients::start(service.addr, CLIENTS, |_| true);
    clients.wait_answered_by(first, CLIENTS);
    for _ in 0..RESTARTS {
        let next = service.restart();
        // Each generation serves a while, so clients are mid-pause at the
        // next restart: about every other client's turn.
        clients.wait_answered_by(next, CLIENTS / 2);
    }
    let tally = clients.finish();
    eprintln!(
        "{} requests by {CLIENTS} paused clients across {RESTARTS} restarts, {} failed, {} connects, {} generations answered",
        tally.requests.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
        tally.connects.load(Ordering::SeqCst),
        tally.generations.lock().unwrap().len()
    );
    assert_nothing_lost(&tally, CLIENTS);
    assert_eq!(tally.generations.lock().unwrap().len(), RESTARTS + 1);
    service.stop();
}

#[test]
fn rapid_restarts_with_paused_and_full_speed_clients_lose_nothing() {
    const CLIENTS: usize = 48;
    const RESTARTS: usize = 60;
    let service = Service::start(&[]);
    let clients = Clients::start(service.addr, CLIENTS, |i| i % 2 == 0);
    clients.wait_answered_by(service.current().unwrap(), 1);
    let mut last = Instant::now();
    for _ in 0..RESTARTS {
        // 0.25 s apart: the pace is the scenario, not a wait for an event.
        std::thread::sleep(Duration::from_millis(250).saturating_sub(last.elapsed()));
        last = Instant::now();
        service.restart();
    }
    let last_generation = service.current().unwrap();
    clients.wait_answered_by(last_generation, 1);
    let tally = clients.finish();
    eprintln!(
        "{} requests by {CLIENTS} clients across {RESTARTS} restarts 0.25 s apart, {} failed, {} connects",
        tally.requests.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
        tally.connects.load(Ordering::SeqCst),
    );
    assert_nothing_lost(&tally, CLIENTS);
    service.stop();
}

/// Half a request before the restart, the rest after: one answer, whole,
/// from whichever generation holds the connection then.
#[test]
fn a_half_sent_request_is_answered_once() {
    let service = Service::start(&[]);
    let first = service.current().unwrap();
    let mut client = Client::connect(service.addr).unwrap();
    assert_eq!(client.get("/?warm").unwrap().generation, first);
    // A whole request and half of the next in one write: the server reads
    // the half into its own buffer with the first.
    client
        .send(b"GET /?whole HTTP/1.1\r\nhost: test\r\n\r\nGET /?half HTTP/1.1\r\nhost: te")
        .unwrap();
    assert_eq!(client.response().unwrap().target, "/?whole");
    let second = service.restart();
    client.send(b"st\r\n\r\n").unwrap();
    let answer = client.response().unwrap();
    assert_eq!(answer.target, "/?half");
    assert!(!answer.close, "{answer:?}");
    // Exactly one answer: the next request gets the next response, and
    // once the old generation is gone, the new one holds the connection.
    assert!(wait_gone(first, LONG), "the old generation exits");
    let next = client.get("/?next").unwrap();
    assert_eq!(next.target, "/?next");
    assert_eq!(next.generation, second, "the connection moved on");
    service.stop();
}

/// A connection still busy when the old generation's probation ends: it
/// finishes its response, goes idle and moves on. The old generation must
/// not stop (and close its copy) before the new one has said it took it.
#[test]
fn a_connection_busy_past_probation_moves_on() {
    busy_past_probation(1);
}

/// The same while the new generation has itself been replaced: it must
/// not stop before the connection has gone on to its own successor, and
/// that one has taken it.
#[test]
fn a_connection_busy_past_probation_moves_on_through_a_draining_generation() {
    busy_past_probation(2);
}

/// A slow request on the first generation, `restarts` restarts while it
/// runs, then the connection must serve on in the last generation.
fn busy_past_probation(restarts: usize) {
    let service = Service::start(&[]);
    let first = service.current().unwrap();
    let mut client = Client::connect(service.addr).unwrap();
    assert_eq!(client.get("/?warm").unwrap().generation, first);
    // Far longer than the restarts and their probation (300 ms): it is
    // over, and only this connection holds the generations, when the
    // response goes out.
    client
        .send(b"GET /sleep?ms=2500 HTTP/1.1\r\nhost: test\r\n\r\n")
        .unwrap();
    let local = client.reader.get_ref().local_addr().unwrap();
    let read = poll(LONG, || {
        (tcp_unread(service.addr).get(&local) == Some(&0)).then_some(())
    });
    assert!(read.is_some(), "the old generation read the slow request");
    let mut generations = vec![first];
    for _ in 0..restarts {
        generations.push(service.restart());
    }
    let slow = client.response().unwrap();
    assert_eq!(slow.generation, first);
    assert!(!slow.close, "{slow:?}");
    let (&last, older) = generations.split_last().unwrap();
    for &pid in older {
        assert!(wait_gone(pid, LONG), "generation {pid} exits");
    }
    let next = client
        .get("/?next")
        .expect("the handed-over connection still serves");
    assert_eq!(next.generation, last);
    service.stop();
}

/// Two requests pipelined right at the switch: both answered, each once,
/// in order. Clients send pair after pair while the restart happens, so
/// pairs land on every side of it.
#[test]
fn pipelined_requests_at_the_switch_are_answered_once_in_order() {
    const CONNECTIONS: usize = 16;
    let service = Arc::new(Service::start(&[]));
    let mut clients: Vec<Client> = (0..CONNECTIONS)
        .map(|_| Client::connect(service.addr).unwrap())
        .collect();
    let old = service.current().unwrap();
    let mut restarting = Some({
        let service = service.clone();
        std::thread::spawn(move || service.restart())
    });
    let mut by_generation: BTreeMap<u32, usize> = BTreeMap::new();
    let mut new = None;
    // Bounded: the restart takes milliseconds; rounds go on until the old
    // generation is gone, and one more.
    for round in 0..100_000 {
        let last = new.is_some() && !alive(old);
        for (i, client) in clients.iter_mut().enumerate() {
            let (a, b) = (format!("/?{round}.{i}.a"), format!("/?{round}.{i}.b"));
            let pair =
                format!("GET {a} HTTP/1.1\r\nhost: t\r\n\r\nGET {b} HTTP/1.1\r\nhost: t\r\n\r\n");
            client.send(pair.as_bytes()).unwrap();
            let first = client.response().unwrap();
            let second = client.response().unwrap();
            assert_eq!((first.target, second.target), (a, b), "in order, each once");
            *by_generation.entry(first.generation).or_default() += 1;
            *by_generation.entry(second.generation).or_default() += 1;
        }
        if last {
            break;
        }
        if restarting.as_ref().is_some_and(|t| t.is_finished()) {
            new = restarting.take().map(|t| t.join().expect("restart"));
        }
    }
    let new = new.expect("the restart finished");
    eprintln!("pipelined requests answered, by generation: {by_generation:?}");
    assert!(!alive(old), "the old generation went away");
    assert_eq!(
        by_generation.keys().copied().collect::<Vec<_>>(),
        BTreeSet::from([old, new]).into_iter().collect::<Vec<_>>(),
        "answered by the old generation, then the new one"
    );
    drop(clients);
    Arc::into_inner(service).expect("the only handle").stop();
}

/// Without the opt-in an idle connection is closed at a restart, as
/// before; with it, a connection that declined is closed, and a
/// connection's state goes with it.
#[test]
fn opt_in_decline_and_state() {
    // No opt-in: closed, cleanly.
    let service = Service::start(&["--no-handover"]);
    let mut idle = Client::connect(service.addr).unwrap();
    idle.get("/").unwrap();
    let first = service.current().unwrap();
    service.restart();
    assert!(idle.sees_clean_eof(), "closed as before");
    assert!(wait_gone(first, LONG));
    service.stop();

    // Opted in: a declined connection is closed, a stateful one moves on
    // with its state.
    let service = Service::start(&[]);
    let mut declined = Client::connect(service.addr).unwrap();
    declined.get("/decline").unwrap();
    let mut stateful = Client::connect(service.addr).unwrap();
    let set = stateful.get("/state?set=db-7").unwrap();
    assert_eq!(set.state.as_deref(), Some("db-7"));
    let first = service.current().unwrap();
    let second = service.restart();
    assert!(declined.sees_clean_eof(), "a declined connection is closed");
    assert!(wait_gone(first, LONG));
    let moved = stateful.get("/state").unwrap();
    assert_eq!(moved.generation, second);
    assert_eq!(
        moved.state.as_deref(),
        Some("db-7"),
        "its state came with it"
    );
    service.stop();
}

/// 50 restarts with idle connections moving each time: every generation
/// holds as many fds as the first (plus the connections it holds), and
/// none of the clients' connections is left half-open.
#[test]
fn fds_stay_flat_over_50_restarts() {
    const RESTARTS: usize = 50;
    const IDLE: usize = 4;
    let service = Service::start(&[]);
    let first = service.current().unwrap();
    let mut clients: Vec<Client> = (0..IDLE)
        .map(|_| Client::connect(service.addr).unwrap())
        .collect();
    for client in &mut clients {
        client.get("/").unwrap();
    }
    let baseline = settled_fds(first, IDLE);
    let mut generation = first;
    for round in 0..RESTARTS {
        let next = service.restart();
        assert!(wait_gone(generation, LONG), "generation {generation} exits");
        for client in &mut clients {
            let answer = client.get("/").unwrap();
            assert_eq!(answer.generation, next, "round {round}");
        }
        let fds = settled_fds(next, IDLE);
        assert_eq!(
            fds, baseline,
            "round {round}: fds of {next} vs the first generation"
        );
        generation = next;
    }
    // No connection half-open: each still answers, and the server side
    // holds no socket its client has closed.
    drop(clients);
    let closed = poll(LONG, || (connection_fds(generation) == 0).then_some(()));
    assert!(
        closed.is_some(),
        "the server closed every connection its client closed"
    );
    service.stop();
}

/// `pid`'s own fds once it holds exactly `connections` TCP connections.
fn settled_fds(pid: u32, connections: usize) -> usize {
    poll(LONG, || (connection_fds(pid) == connections).then_some(())).unwrap_or_else(|| {
        panic!(
            "{pid} holds {} connections, not {connections}",
            connection_fds(pid)
        )
    });
    let (own, _inherited) = fd_count(pid);
    assert!(alive(pid));
    own
}

/// The `echo` example: a line session (as `nc` would hold it) survives 5
/// hot restarts; after each, once the old generation is gone, a line typed
/// is answered by the new one, on the same connection.
#[test]
fn an_echo_session_survives_5_restarts() {
    become_subreaper();
    let binary = example_binary("echo");
    let mut child = Command::new(&binary)
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the echo example");
    // Each generation says `listening on ADDR (pid N)` once ready.
    let (lines, ready) = std::sync::mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("listening on ") {
                let _ = lines.send(rest.to_owned());
            }
        }
    });
    let parse = |line: String| -> (SocketAddr, u32) {
        let (addr, pid) = line.split_once(" (pid ").expect("listening line");
        (
            addr.parse().unwrap(),
            pid.trim_end_matches(')').parse().unwrap(),
        )
    };
    let (addr, mut pid) = parse(ready.recv_timeout(LONG).expect("first generation"));
    drop(child);
    let mut session = BufReader::new(TcpStream::connect(addr).unwrap());
    session.get_ref().set_read_timeout(Some(LONG)).unwrap();
    let mut pids = vec![pid];
    for round in 0..6 {
        let line = format!("line {round}\n");
        session.get_mut().write_all(line.as_bytes()).unwrap();
        let mut echoed = String::new();
        session.read_line(&mut echoed).unwrap();
        assert_eq!(echoed, line, "round {round}: echoed by generation {pid}");
        if round == 5 {
            break;
        }
        signal(pid, Signal::HUP).unwrap();
        let (_, next) = parse(ready.recv_timeout(LONG).expect("the next generation"));
        assert!(wait_gone(pid, LONG), "generation {pid} exits");
        pid = next;
        pids.push(pid);
    }
    signal(pid, Signal::TERM).unwrap();
    for pid in pids {
        assert!(wait_gone(pid, LONG), "generation {pid} exits");
    }
    let mut rest = String::new();
    assert!(
        matches!(session.read_to_string(&mut rest), Ok(0)),
        "{rest:?}"
    );
}
