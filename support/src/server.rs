//! A server binary run as a real process, and every generation it turns
//! into, seen from outside: its event lines ([`crate::events`]), its pid
//! file and its answers.
//!
//! The server must take `--listen ADDR`, `--pid-file PATH` and `--events`,
//! answer `GET /` with `200 ok` and an `x-generation: <pid>` header, and
//! hot-restart on SIGHUP; the library's `http` example and the hyper
//! package's server do.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::events::Event;
use crate::load;
use crate::procs::{alive, become_subreaper, fd_count, poll, signal, wait_gone};

/// Generous bound for anything that should take milliseconds.
pub const LONG: Duration = Duration::from_secs(30);

/// How to start a server.
#[derive(Debug, Clone)]
pub struct Launch {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    echo: Option<String>,
}

impl Launch {
    /// `program`, called `name` in messages and temporary file names.
    pub fn new(name: &str, program: impl Into<PathBuf>) -> Launch {
        Launch {
            name: name.to_owned(),
            program: program.into(),
            args: Vec::new(),
            echo: None,
        }
    }

    /// Adds arguments, before the `--listen 127.0.0.1:0 --pid-file PATH
    /// --events` that [`start`](Launch::start) appends.
    pub fn args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Launch {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Echoes every line the generations write on stderr, after `prefix`.
    /// Without it, lines are echoed (after `name: `) only if the
    /// `SEAMLESS_TEST_LOG` environment variable is set.
    pub fn echo(mut self, prefix: impl Into<String>) -> Launch {
        self.echo = Some(prefix.into());
        self
    }

    /// The name given to [`new`](Launch::new).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts the server on a free loopback port, with its pid file in a
    /// temporary directory, and waits until its first generation is ready:
    /// it says so, the pid file names it and it answers. Its open fds are
    /// counted when it says it is ready, before any connection.
    ///
    /// # Errors
    ///
    /// It cannot be started, or its first generation does not become ready
    /// within [`LONG`] (the error shows its last log lines). Whatever was
    /// started is killed.
    pub fn start(&self) -> io::Result<Server> {
        become_subreaper();
        let dir = tempfile::tempdir()?;
        let pid_file = dir.path().join(format!("{}.pid", self.name));
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .args(["--listen", "127.0.0.1:0", "--pid-file"])
            .arg(&pid_file)
            .arg("--events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("starting {}: {e}", self.program.display()),
                )
            })?;
        let first_pid = child.id();
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        // Reaped by `alive`, by pid, like the generations after it.
        drop(child);

        let shared = Arc::new(Shared::default());
        shared.lock().pids.insert(first_pid);
        let echo = self
            .echo
            .clone()
            .or_else(|| std::env::var_os("SEAMLESS_TEST_LOG").map(|_| format!("{}: ", self.name)));
        read_stdout(stdout.expect("piped"), shared.clone());
        read_stderr(stderr.expect("piped"), shared.clone(), echo);
        let mut server = Server {
            name: self.name.clone(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            first_pid,
            first_fds: (0, 0),
            pid_file,
            shared,
            _dir: dir,
        };
        let listening = server.wait(LONG, |seen| {
            let addr = seen.events.iter().find_map(|event| match event {
                Event::Listening { pid, addr, .. } if *pid == first_pid => Some(Ok(*addr)),
                _ => None,
            });
            addr.or_else(|| seen.stderr_closed.then_some(Err(())))
        });
        server.addr = match listening {
            Some(Ok(addr)) => addr,
            Some(Err(())) => return Err(server.error("exited before it listened")),
            None => return Err(server.error("no `listening` event")),
        };
        let ready = server.wait(LONG, |seen| {
            let ready = seen
                .events
                .iter()
                .any(|event| matches!(event, Event::Ready { pid, .. } if *pid == first_pid));
            (ready || seen.stderr_closed).then_some(ready)
        });
        if ready != Some(true) {
            return Err(server.error("the first generation never said it was ready"));
        }
        // Before any connection: once one has been served, its socket can
        // linger in the process after the TCP tables stop listing it (a
        // closed socket not yet released), and be counted as a leak.
        server.first_fds = fd_count(first_pid);
        if !server.wait_answers(first_pid, LONG) {
            return Err(server.error("the first generation never became ready"));
        }
        Ok(server)
    }
}

/// Everything the generations have said so far.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every event, in the order its line arrived.
    pub events: Vec<Event>,
    /// Every line written on stderr, events included.
    pub lines: Vec<String>,
    /// Lines that start like an event but do not parse, with why.
    pub bad_lines: Vec<String>,
    /// Every pid that wrote an event, was named as a new generation or was
    /// read from the pid file.
    pub pids: BTreeSet<u32>,
    /// Every process holding the server's stdout has exited.
    pub stdout_closed: bool,
    /// Every process holding the server's stderr has exited.
    pub stderr_closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    seen: Mutex<Seen>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut Seen)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }
}

fn read_stdout(stdout: impl Read + Send + 'static, shared: Arc<Shared>) {
    std::thread::spawn(move || {
        // Only its end matters: each generation says `listening on` there,
        // for people; the events say it for us.
        let _ = io::copy(&mut BufReader::new(stdout), &mut io::sink());
        shared.update(|seen| seen.stdout_closed = true);
    });
}

fn read_stderr(stderr: impl Read + Send + 'static, shared: Arc<Shared>, echo: Option<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(prefix) = &echo {
                eprintln!("{prefix}{line}");
            }
            shared.update(|seen| {
                match Event::from_line(&line) {
                    Some(Ok(event)) => {
                        seen.pids.insert(event.pid());
                        if let Event::Upgraded { child, .. } = event {
                            seen.pids.insert(child);
                        }
                        seen.events.push(event);
                    }
                    Some(Err(e)) => seen.bad_lines.push(format!("{e}: {line}")),
                    None => {}
                }
                seen.lines.push(line);
            });
        }
        shared.update(|seen| seen.stderr_closed = true);
    });
}

/// Why an upgrade brought no new generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeFailure {
    /// The old generation said it failed (and serves on), and why.
    Failed(String),
    /// The old generation said nothing about it within this long.
    Silent(Duration),
}

impl fmt::Display for UpgradeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeFailure::Failed(reason) => write!(f, "upgrade failed: {reason}"),
            UpgradeFailure::Silent(timeout) => write!(f, "no new generation within {timeout:?}"),
        }
    }
}

/// A running server and every generation it turns into. Dropping it kills
/// the generations still running.
#[derive(Debug)]
pub struct Server {
    name: String,
    addr: SocketAddr,
    first_pid: u32,
    first_fds: (usize, usize),
    pid_file: PathBuf,
    shared: Arc<Shared>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The pid of the first generation.
    pub fn first_pid(&self) -> u32 {
        self.first_pid
    }

    /// The first generation's open fds when it said it was ready, before
    /// any connection: `(own, inherited)`, as [`fd_count`] counts them.
    pub fn first_fds(&self) -> (usize, usize) {
        self.first_fds
    }

    /// The pid file.
    pub fn pid_file(&self) -> &Path {
        &self.pid_file
    }

    /// The pid the pid file names now.
    pub fn pid(&self) -> Option<u32> {
        let pid = std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        self.shared.lock().pids.insert(pid);
        Some(pid)
    }

    /// Every generation seen so far (see [`Seen::pids`]).
    pub fn pids_seen(&self) -> BTreeSet<u32> {
        self.shared.lock().pids.clone()
    }

    /// The generations seen that still run.
    pub fn alive(&self) -> Vec<u32> {
        self.pids_seen().into_iter().filter(|p| alive(*p)).collect()
    }

    /// How many events have been seen: a mark for
    /// [`wait_event`](Server::wait_event) to look after.
    pub fn events_seen(&self) -> usize {
        self.shared.lock().events.len()
    }

    /// Calls `check` with what has been seen, now and after each new line,
    /// until it returns `Some`, or `timeout` passes (then it is called a last
    /// time).
    pub fn wait<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Seen) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut seen = self.shared.lock();
        loop {
            if let Some(value) = check(&seen) {
                return Some(value);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            seen = match self.shared.changed.wait_timeout(seen, left) {
                Ok((seen, _)) => seen,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// The first event from the `since`-th on (see
    /// [`events_seen`](Server::events_seen)) that `matches` accepts, waiting
    /// for it up to `timeout`.
    pub fn wait_event(
        &self,
        since: usize,
        timeout: Duration,
        mut matches: impl FnMut(&Event) -> bool,
    ) -> Option<Event> {
        self.wait(timeout, |seen| {
            seen.events.iter().skip(since).find(|e| matches(e)).cloned()
        })
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.shared.lock().events.clone()
    }

    /// Lines that looked like events but did not parse.
    pub fn bad_lines(&self) -> Vec<String> {
        self.shared.lock().bad_lines.clone()
    }

    /// Waits up to `timeout` until the pid file names `pid` and `pid`
    /// answers a request on a new connection; says whether it did.
    pub fn wait_answers(&self, pid: u32, timeout: Duration) -> bool {
        poll(timeout, || {
            (self.pid() == Some(pid) && load::probe(self.addr, LONG).ok() == Some(pid))
                .then_some(())
        })
        .is_some()
    }

    /// The outcome of the upgrade of generation `old` that was asked for
    /// after the `since`-th event: the new generation's pid once `old` says
    /// its successor is ready, or why not.
    pub fn wait_upgrade(
        &self,
        since: usize,
        old: u32,
        timeout: Duration,
    ) -> Result<u32, UpgradeFailure> {
        let outcome = self.wait_event(since, timeout, |event| {
            matches!(event, Event::Upgraded { pid, .. } | Event::UpgradeFailed { pid, .. }
                if *pid == old)
        });
        match outcome {
            Some(Event::Upgraded { child, .. }) => Ok(child),
            Some(Event::UpgradeFailed { reason, .. }) => Err(UpgradeFailure::Failed(reason)),
            _ => Err(UpgradeFailure::Silent(timeout)),
        }
    }

    /// Waits until stdout and stderr are both closed: every process that
    /// inherited them has exited.
    pub fn wait_pipes_closed(&self, timeout: Duration) -> bool {
        self.wait(timeout, |seen| {
            (seen.stdout_closed && seen.stderr_closed).then_some(())
        })
        .is_some()
    }

    /// The last `lines` lines written on stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let seen = self.shared.lock();
        let from = seen.lines.len().saturating_sub(lines);
        seen.lines[from..].join("\n")
    }

    /// Panics with `message` and the last log lines.
    pub fn fail(&self, message: &str) -> ! {
        panic!("{}", self.error(message));
    }

    fn error(&self, message: &str) -> io::Error {
        io::Error::other(format!(
            "{}: {message}\n--- last server log lines ---\n{}",
            self.name,
            self.log_tail(60)
        ))
    }
}

impl Drop for Server {
    /// No generation may outlive its test. Oldest first: a generation that
    /// outlived its child (killed in its probation) would start a
    /// replacement nobody here knows of. Pid numbers wrap, so the order is
    /// the generations', not the pids'.
    fn drop(&mut self) {
        let mut order = vec![self.first_pid];
        {
            let seen = self.shared.lock();
            for event in &seen.events {
                if let Event::Upgraded { child, .. } = event {
                    order.push(*child);
                }
            }
            order.extend(seen.pids.iter().copied());
        }
        let mut killed = BTreeSet::new();
        for pid in order {
            if killed.insert(pid) && alive(pid) {
                let _ = signal(pid, Signal::KILL);
                wait_gone(pid, Duration::from_secs(5));
            }
        }
    }
}
