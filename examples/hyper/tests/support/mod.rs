//! What the tests share: the server binary run as a real process (and every
//! generation it turns into), its log lines to synchronise on, and a small
//! blocking HTTP/1.1 client for the drain scenarios.
//!
//! The load client and the process helpers are the library's own test
//! support (`seamless_test_support`, in `support/`).
#![allow(dead_code)]

pub use seamless_test_support::{load, procs};

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procs::{alive, become_subreaper, pid_of, poll, wait_gone};
use rustix::process::Signal;

/// Generous bound for anything that should take milliseconds.
pub const LONG: Duration = Duration::from_secs(30);

/// The server binary. It is this package's own `[[bin]]`, so cargo builds it
/// (from the same sources, with the same profile) before it runs the tests
/// and tells us where: never a stale binary.
pub fn server_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_seamless-hyper"))
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A running server and every generation it turns into.
pub struct Server {
    pub addr: SocketAddr,
    pub pid_file: PathBuf,
    pub first_pid: u32,
    /// Every line the generations wrote on stderr.
    log: Arc<Mutex<Vec<String>>>,
    /// Every pid that logged a line.
    pids: Arc<Mutex<BTreeSet<u32>>>,
    /// A message when stdout, then when stderr, reaches EOF: every process
    /// holding them has exited.
    closed: Receiver<&'static str>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the server on a free loopback port with `extra` options, and
    /// waits until it is ready and answers.
    pub fn start(name: &str, extra: &[&str]) -> Server {
        become_subreaper();
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join(format!("{name}.pid"));
        let mut child = Command::new(server_binary())
            .args(["--listen", "127.0.0.1:0", "--pid-file"])
            .arg(&pid_file)
            .args(["--ready-timeout-ms", "20000", "--drain-timeout-ms", "20000"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the server");
        let first_pid = child.id();
        // Reaped by `alive`, by pid: the `Child` is not waited on.
        let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        drop(child);

        let (closed_tx, closed) = mpsc::channel();
        let (line_tx, lines) = mpsc::channel();
        {
            let closed_tx = closed_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = line_tx.send(line);
                }
                let _ = closed_tx.send("stdout");
            });
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        let pids = Arc::new(Mutex::new(BTreeSet::from([first_pid])));
        {
            let (log, pids) = (log.clone(), pids.clone());
            let echo = std::env::var_os("SEAMLESS_TEST_LOG").is_some();
            let name = name.to_owned();
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
                let _ = closed_tx.send("stderr");
            });
        }
        let mut server = Server {
            addr: "127.0.0.1:0".parse().unwrap(),
            pid_file,
            first_pid,
            log,
            pids,
            closed,
            _dir: dir,
        };
        let line = match lines.recv_timeout(LONG) {
            Ok(line) => line,
            Err(e) => server.fail(&format!("no `listening on` line from the server: {e}")),
        };
        server.addr = match line.strip_prefix("listening on ").map(str::parse) {
            Some(Ok(addr)) => addr,
            _ => server.fail(&format!("unexpected first line on stdout: {line:?}")),
        };
        // Ready: the pid file names it and it answers.
        if poll(LONG, || {
            (server.pid() == Some(first_pid)
                && load::probe(server.addr, LONG).ok() == Some(first_pid))
            .then_some(())
        })
        .is_none()
        {
            server.fail("the first generation never became ready");
        }
        server
    }

    /// The pid in the pid file.
    pub fn pid(&self) -> Option<u32> {
        read_pid(&self.pid_file)
    }

    pub fn pids_seen(&self) -> BTreeSet<u32> {
        self.pids.lock().unwrap().clone()
    }

    /// Every log line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for the first log line of `pid` whose text (after the `[pid] `
    /// prefix) satisfies `matches`, and returns that text.
    pub fn wait_line(&self, pid: u32, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let prefix = format!("[{pid}] ");
        let found = poll(LONG, || {
            let log = self.log.lock().unwrap();
            log.iter()
                .filter_map(|line| line.strip_prefix(&prefix))
                .find(|text| matches(text))
                .map(str::to_owned)
        });
        match found {
            Some(text) => text,
            None => self.fail(&format!("no log line from {pid}: {what}")),
        }
    }

    /// With `--verbose`: waits until `peer` is the only connection `pid` has
    /// accepted and not yet closed (the readiness probes' are gone).
    pub fn wait_only_open(&self, pid: u32, peer: SocketAddr) {
        let prefix = format!("[{pid}] ");
        let only = poll(LONG, || {
            let log = self.log.lock().unwrap();
            let mut open = BTreeSet::new();
            for text in log.iter().filter_map(|line| line.strip_prefix(&prefix)) {
                if let Some(addr) = text.strip_prefix("accepted ") {
                    open.insert(addr.to_owned());
                } else if let Some(rest) = text.strip_prefix("closed ") {
                    let addr = rest.split_once(": ").map_or(rest, |(addr, _)| addr);
                    open.remove(addr);
                }
            }
            (open == BTreeSet::from([peer.to_string()])).then_some(())
        });
        if only.is_none() {
            self.fail(&format!(
                "{pid} never had {peer} as its only open connection"
            ));
        }
    }

    /// Waits until the pid file names a generation other than `old` and that
    /// generation answers. Returns its pid.
    pub fn wait_next_generation(&self, old: u32) -> u32 {
        let Some(new) = poll(LONG, || self.pid().filter(|pid| *pid != old)) else {
            self.fail(&format!("no new pid in the pid file after SIGHUP to {old}"));
        };
        let answered = poll(LONG, || {
            (load::probe(self.addr, LONG).ok() == Some(new)).then_some(())
        });
        if answered.is_none() {
            self.fail(&format!("generation {new} never answered"));
        }
        new
    }

    /// Waits until both stdout and stderr reach EOF: every process that
    /// inherited them has exited.
    pub fn wait_pipes_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.closed.recv_timeout(left) {
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return false,
            }
        }
        true
    }

    /// The generations seen that still run.
    pub fn alive(&self) -> Vec<u32> {
        self.pids_seen()
            .into_iter()
            .filter(|pid| alive(*pid))
            .collect()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log.lock().unwrap();
        let from = log.len().saturating_sub(lines);
        log[from..].join("\n")
    }

    pub fn fail(&self, message: &str) -> ! {
        panic!(
            "{message}\n--- last server log lines ---\n{}",
            self.log_tail(60)
        );
    }
}

impl Drop for Server {
    /// After a failure, no generation may outlive the test.
    fn drop(&mut self) {
        for pid in self.pids_seen() {
            if alive(pid) {
                let _ = rustix::process::kill_process(pid_of(pid), Signal::KILL);
                wait_gone(pid, Duration::from_secs(5));
            }
        }
    }
}

/// A response, read in full.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The value of header `name` (lower case), if present once or more.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A blocking client connection; every read is bounded by [`LONG`].
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(LONG)).expect("read timeout");
    stream.set_write_timeout(Some(LONG)).expect("write timeout");
    stream
}

/// Sends `GET path` (keep-alive unless `close`).
pub fn send_get(stream: &mut TcpStream, path: &str, close: bool) {
    let connection = if close { "connection: close\r\n" } else { "" };
    let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{connection}\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("send the request");
}

/// Reads one response with a `content-length` body, and nothing after it.
pub fn read_response(stream: &mut TcpStream) -> io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "EOF after {} bytes of a response: {:?}",
                    buf.len(),
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        let head_len = match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        };
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).trim().to_owned(),
                )
            })
            .collect();
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no content-length"))?;
        let status = parsed.code.unwrap_or(0);
        let mut body = buf.split_off(head_len);
        while body.len() < length {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside the body",
                ));
            }
            body.extend_from_slice(&chunk[..n]);
        }
        if body.len() > length {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bytes after the body",
            ));
        }
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
}

/// Reads on until the server's FIN: a clean EOF with nothing before it. A
/// reset, bytes, or no EOF within [`LONG`] fail.
pub fn expect_eof(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => assert!(
            rest.is_empty(),
            "unexpected bytes before EOF: {:?}",
            String::from_utf8_lossy(&rest)
        ),
        Err(e) => panic!("expected a clean EOF, got {e} ({:?})", e.kind()),
    }
}

/// No RST reached the client. Call once the server side has closed.
pub fn assert_no_reset(stream: &TcpStream) {
    let error = stream.take_error().expect("SO_ERROR");
    assert!(
        error.is_none(),
        "the server reset the connection (SO_ERROR is {error:?})"
    );
}
