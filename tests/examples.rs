//! The stack examples (`async_std`, `custom_runtime`, `unix`, `udp`, `tls`)
//! run as real processes, each hot-restarted once with a SIGHUP:
//!
//! - the new generation serves (new connections, or datagrams, answered by
//!   its pid), and nothing is refused or lost meanwhile;
//! - a request in flight (`hold`) is still answered by the old generation,
//!   after its drain started;
//! - an idle connection of the old generation is closed cleanly (EOF, no
//!   reset; over TLS, `close_notify` first, which a blocking rustls client
//!   needs to read `Ok(0)` rather than a truncation error);
//! - the old generation exits by itself; a SIGTERM then stops the new one,
//!   and no process is left.
//!
//! Set `SEAMLESS_TEST_LOG=1` to see the examples' own logs.

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_rustls::pki_types::pem::PemObject;
use futures_rustls::pki_types::{CertificateDer, ServerName};
use futures_rustls::rustls::{self, ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustix::process::Signal;
use seamless_test_support::procs::{alive, become_subreaper, pid_of, poll, signal, wait_gone};

/// Generous bound for anything that should take milliseconds.
const LONG: Duration = Duration::from_secs(30);

/// The example binary `name`, built with the profile and target directory
/// of this test.
fn example_binary(name: &str) -> PathBuf {
    seamless_test_support::build::example_binary(env!("CARGO_MANIFEST_DIR"), name)
}

/// A running example and every generation it turns into.
struct Example {
    name: &'static str,
    /// Where it listens, from its `listening on` line.
    listen: String,
    pid_file: PathBuf,
    first_pid: u32,
    log: Arc<Mutex<Vec<String>>>,
    pids: Arc<Mutex<BTreeSet<u32>>>,
    /// One message when stdout, one when stderr reaches EOF.
    closed: Receiver<()>,
    _dir: tempfile::TempDir,
}

impl Example {
    /// Starts example `name`; `listen` gets the temp dir to put a path in.
    fn start(name: &'static str, listen: impl FnOnce(&Path) -> String) -> Example {
        become_subreaper();
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join(format!("{name}.pid"));
        let mut child = Command::new(example_binary(name))
            .arg("--listen")
            .arg(listen(dir.path()))
            .arg("--pid-file")
            .arg(&pid_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the example");
        let first_pid = child.id();
        let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        // Reaped by `alive`, by pid.
        drop(child);

        let (closed_tx, closed) = mpsc::channel();
        let (line_tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let pids = Arc::new(Mutex::new(BTreeSet::from([first_pid])));
        let echo = std::env::var_os("SEAMLESS_TEST_LOG").is_some();
        {
            let closed_tx = closed_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = line_tx.send(line);
                }
                let _ = closed_tx.send(());
            });
        }
        {
            let (log, pids) = (log.clone(), pids.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("{name}: {line}");
                    }
                    let pid = line
                        .strip_prefix('[')
                        .and_then(|rest| rest.split_once(']'))
                        .and_then(|(pid, _)| pid.parse::<u32>().ok());
                    pids.lock().unwrap().extend(pid);
                    log.lock().unwrap().push(line);
                }
                let _ = closed_tx.send(());
            });
        }
        let mut example = Example {
            name,
            listen: String::new(),
            pid_file,
            first_pid,
            log,
            pids,
            closed,
            _dir: dir,
        };
        let line = match lines.recv_timeout(LONG) {
            Ok(line) => line,
            Err(e) => example.fail(&format!("no `listening on` line: {e}")),
        };
        match line.strip_prefix("listening on ") {
            Some(listen) => example.listen = listen.to_owned(),
            None => example.fail(&format!("unexpected first line: {line:?}")),
        }
        if example.wait_pid(|pid| pid == first_pid).is_none() {
            example.fail("the pid file never named the first generation");
        }
        example
    }

    /// Waits until the pid file names a pid `want` accepts.
    fn wait_pid(&self, want: impl Fn(u32) -> bool) -> Option<u32> {
        poll(LONG, || {
            let pid: u32 = std::fs::read_to_string(&self.pid_file)
                .ok()?
                .trim()
                .parse()
                .ok()?;
            self.pids.lock().unwrap().insert(pid);
            want(pid).then_some(pid)
        })
    }

    /// Waits until stdout and stderr are closed: every generation exited.
    fn wait_pipes_closed(&self) -> bool {
        let deadline = Instant::now() + LONG;
        (0..2).all(|_| {
            let left = deadline.saturating_duration_since(Instant::now());
            self.closed.recv_timeout(left).is_ok()
        })
    }

    fn fail(&self, message: &str) -> ! {
        let log = self.log.lock().unwrap();
        let from = log.len().saturating_sub(40);
        panic!(
            "{}: {message}\n--- last log lines ---\n{}",
            self.name,
            log[from..].join("\n")
        );
    }

    /// Ends the test: SIGTERM to the serving generation, which must exit,
    /// with no process left behind.
    fn stop(self, serving: u32) {
        signal(serving, Signal::TERM).expect("SIGTERM");
        if !wait_gone(serving, LONG) {
            self.fail("the new generation did not exit after SIGTERM");
        }
        if !self.wait_pipes_closed() {
            self.fail("a process still holds the example's stdout/stderr");
        }
    }
}

impl Drop for Example {
    /// After a failure, no generation may outlive the test.
    fn drop(&mut self) {
        for &pid in self.pids.lock().unwrap().iter() {
            if alive(pid) {
                let _ = rustix::process::kill_process(pid_of(pid), Signal::KILL);
                wait_gone(pid, Duration::from_secs(5));
            }
        }
    }
}

/// One line from a blocking stream, without its newline; `None` at EOF.
fn read_line(stream: &mut (impl Read + ?Sized)) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte)? {
            0 if line.is_empty() => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ if byte[0] == b'\n' => return Ok(Some(String::from_utf8_lossy(&line).into())),
            _ => line.push(byte[0]),
        }
    }
}

/// `<pid> <text>`: the pid that answered, and what it said.
fn parse_reply(reply: &str) -> (u32, String) {
    let (pid, text) = reply.split_once(' ').expect("a `<pid> <text>` reply");
    (pid.parse().expect("a pid"), text.to_owned())
}

/// A connected stream, TCP or Unix.
trait Conn: Read + Write {
    /// `SO_ERROR`: a reset shows here.
    fn take_error(&self) -> io::Result<Option<io::Error>>;
}

impl Conn for TcpStream {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        TcpStream::take_error(self)
    }
}

impl Conn for UnixStream {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        UnixStream::take_error(self)
    }
}

/// Sends `line` and returns who answered what.
fn ask(conn: &mut dyn Conn, line: &str) -> io::Result<(u32, String)> {
    conn.write_all(format!("{line}\n").as_bytes())?;
    match read_line(conn)? {
        Some(reply) => Ok(parse_reply(&reply)),
        None => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}

/// The hot restart of a stream example (TCP or Unix), as the module docs
/// say. `connect` opens a fresh connection with read timeouts set.
/// Returns where the example listened, once every generation has exited.
fn hot_restart_stream_example(
    name: &'static str,
    listen: impl FnOnce(&Path) -> String,
    connect: impl Fn(&str) -> io::Result<Box<dyn Conn>>,
) -> String {
    let example = Example::start(name, listen);
    let first = example.first_pid;
    let addr = example.listen.clone();
    let fresh = || connect(&addr).unwrap_or_else(|e| example.fail(&format!("connect: {e}")));

    let mut idle = fresh();
    assert_eq!(
        ask(&mut *idle, "hello").expect("hello"),
        (first, "hello".into())
    );
    let mut held = fresh();
    assert_eq!(
        ask(&mut *held, "hold").expect("hold"),
        (first, "holding".into())
    );

    signal(first, Signal::HUP).expect("SIGHUP");
    // New connections all along: none refused, each answered, until the
    // new generation answers.
    let mut probes = 0;
    let second = poll(LONG, || {
        probes += 1;
        let mut conn =
            connect(&addr).unwrap_or_else(|e| example.fail(&format!("probe {probes}: {e}")));
        let (pid, text) = ask(&mut *conn, "probe")
            .unwrap_or_else(|e| example.fail(&format!("probe {probes} unanswered: {e}")));
        assert_eq!(text, "probe");
        (pid != first).then_some(pid)
    })
    .unwrap_or_else(|| example.fail("the new generation never answered"));
    if example.wait_pid(|pid| pid == second).is_none() {
        example.fail("the pid file never named the new generation");
    }

    // The request in flight is answered by the generation that took it,
    // once its drain started; then that connection and the idle one end
    // cleanly.
    assert_eq!(
        read_line(&mut *held).expect("the held reply"),
        Some(format!("{first} hold"))
    );
    for (what, conn) in [("held", &mut held), ("idle", &mut idle)] {
        match read_line(&mut **conn) {
            Ok(None) => {}
            other => example.fail(&format!("the {what} connection: {other:?}, not EOF")),
        }
        let error = conn.take_error().expect("SO_ERROR");
        assert!(
            error.is_none(),
            "the {what} connection was reset: {error:?}"
        );
    }
    if !wait_gone(first, LONG) {
        example.fail("the old generation did not exit");
    }
    assert_eq!(
        ask(&mut *fresh(), "after").expect("after"),
        (second, "after".into())
    );
    eprintln!("{name}: {first} -> {second} after {probes} probes");
    example.stop(second);
    addr
}

fn tcp(addr: &str) -> io::Result<Box<dyn Conn>> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(LONG))?;
    Ok(Box::new(stream))
}

/// A blocking rustls client connection that trusts the test CA.
struct Tls(StreamOwned<ClientConnection, TcpStream>);

impl Read for Tls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Tls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Drop for Tls {
    /// A well-behaved client ends its session with `close_notify` too.
    fn drop(&mut self) {
        self.0.conn.send_close_notify();
        let _ = self.0.conn.complete_io(&mut self.0.sock);
    }
}

impl Conn for Tls {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.0.sock.take_error()
    }
}

fn tls(addr: &str) -> io::Result<Box<dyn Conn>> {
    let mut roots = RootCertStore::empty();
    let ca =
        CertificateDer::from_pem_slice(include_bytes!("tls/ca.pem")).map_err(io::Error::other)?;
    roots.add(ca).map_err(io::Error::other)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
    let session = ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(LONG))?;
    Ok(Box::new(Tls(StreamOwned::new(session, stream))))
}

fn unix(path: &str) -> io::Result<Box<dyn Conn>> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(LONG))?;
    Ok(Box::new(stream))
}

#[test]
fn async_std_example_hot_restarts() {
    hot_restart_stream_example("async_std", |_| "127.0.0.1:0".into(), tcp);
}

/// TLS, not opted in to the live handoff: the held request is answered,
/// then it and the idle connection get `close_notify` before the close.
#[test]
fn tls_example_hot_restarts() {
    hot_restart_stream_example("tls", |_| "127.0.0.1:0".into(), tls);
}

#[test]
fn custom_runtime_example_hot_restarts() {
    hot_restart_stream_example("custom_runtime", |_| "127.0.0.1:0".into(), tcp);
}

/// The socket file outlives the handover (the new generation is reached
/// through it), and is removed by the final stop.
#[test]
fn unix_example_hot_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lines.sock");
    let listen = path.to_string_lossy().into_owned();
    hot_restart_stream_example("unix", |_| listen, unix);
    assert!(!path.exists(), "the final stop removes the socket file");
}

/// A stale socket file (its server crashed: a socket nothing accepts on)
/// is replaced on a fresh start; a live one is an error naming the listener
/// and the path.
#[test]
fn unix_socket_file_stale_replaced_live_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lines.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    assert!(path.exists(), "a stale socket file");
    let listen = path.to_string_lossy().into_owned();
    let example = Example::start("unix", |_| listen.clone());
    let first = example.first_pid;
    let mut conn = unix(&example.listen).expect("connect");
    assert_eq!(ask(&mut *conn, "hi").expect("hi"), (first, "hi".into()));
    drop(conn);

    // While it serves, a second server on the same path is refused.
    let out = Command::new(example_binary("unix"))
        .arg("--listen")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run a second server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("\"lines\""), "names the listener: {stderr}");
    assert!(stderr.contains(&listen), "names the path: {stderr}");
    assert!(stderr.contains("another server"), "{stderr}");
    assert!(path.exists(), "the live server's file is left alone");

    example.stop(first);
    assert!(!path.exists(), "the final stop removes the socket file");
}

/// UDP: every datagram sent across the restart gets exactly one answer,
/// first from the old generation, then from the new one; a datagram in
/// flight is answered by the old one after its drain started.
#[test]
fn udp_example_hot_restarts() {
    let example = Example::start("udp", |_| "127.0.0.1:0".into());
    let first = example.first_pid;
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client.connect(&example.listen).expect("connect");
    client.set_read_timeout(Some(LONG)).expect("timeout");
    let ask = |text: &str| -> (u32, String) {
        client.send(text.as_bytes()).expect("send");
        let mut buf = [0u8; 256];
        let n = client
            .recv(&mut buf)
            .unwrap_or_else(|e| example.fail(&format!("no answer to {text:?}: {e}")));
        parse_reply(String::from_utf8_lossy(&buf[..n]).trim_end())
    };
    let held = UdpSocket::bind("127.0.0.1:0").expect("bind");
    held.connect(&example.listen).expect("connect");
    held.set_read_timeout(Some(LONG)).expect("timeout");
    held.send(b"hold").expect("send");
    let mut buf = [0u8; 256];
    let n = held.recv(&mut buf).expect("holding");
    assert_eq!(
        parse_reply(std::str::from_utf8(&buf[..n]).expect("utf-8").trim_end()),
        (first, "holding".into())
    );
    assert_eq!(ask("hello"), (first, "hello".into()));

    signal(first, Signal::HUP).expect("SIGHUP");
    // Each datagram is answered once, in order: a lost one times out, an
    // answer to an earlier one would not match.
    let mut sent = 0;
    let second = poll(LONG, || {
        sent += 1;
        let text = format!("probe {sent}");
        let (pid, answer) = ask(&text);
        assert_eq!(answer, text);
        (pid != first).then_some(pid)
    })
    .unwrap_or_else(|| example.fail("the new generation never answered"));
    let n = held.recv(&mut buf).expect("the held answer");
    assert_eq!(
        parse_reply(std::str::from_utf8(&buf[..n]).expect("utf-8").trim_end()),
        (first, "hold".into())
    );
    if !wait_gone(first, LONG) {
        example.fail("the old generation did not exit");
    }
    // The old generation is gone; the socket serves on.
    for i in 0..10 {
        let text = format!("after {i}");
        assert_eq!(ask(&text), (second, text.clone()));
    }
    eprintln!("udp: {first} -> {second} after {sent} datagrams");
    example.stop(second);
}
