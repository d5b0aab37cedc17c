//! Hot restart: start the next generation with the listening sockets
//! inherited, wait until it is ready, then drain this one.
//!
//! # The invariant
//!
//! At any moment there are one or more generations alive, and **at most one
//! of them is not ready**. Every alive generation holds the listening
//! sockets (they are the same sockets, shared), but only the newest ready one
//! accepts: an older one closes its copies as soon as its successor says it
//! is ready, then drains within its own deadline. A successor that crashes,
//! writes garbage or never becomes ready is killed, and the old generation
//! goes on serving as if nothing happened.
//!
//! # How it works
//!
//! 1. [`Upgrader::upgrade`] refuses if an upgrade is already running or this
//!    process is not ready itself.
//! 2. It starts the program this process was started from (resolved at
//!    start-up, so a replaced binary is picked up) with the same arguments
//!    and environment, and the registered fds at 3, 4, ..., described by the
//!    systemd socket-activation variables `LISTEN_FDS`, `LISTEN_FDNAMES` and
//!    `LISTEN_PID` (the child's own pid, written in the child before exec).
//!    One more fd, named `seamless-ready`, is the readiness pipe. Nothing
//!    else leaks in. The child is created on a short-lived thread, without
//!    copying this process's memory; the executor never waits for its
//!    exec, and the ready timeout counts from the start of the upgrade.
//! 3. The child's [`Upgrader::new`] takes the fds; its listeners come back by
//!    name; it calls [`Upgrader::ready`], which writes `ready` on the pipe.
//! 4. The parent then starts draining (its [`Shutdown`] goes to
//!    `Draining`), and `upgrade` resolves to the child's pid. On a child
//!    exit, a timeout or garbage it kills and reaps the child instead and
//!    resolves to an [`UpgradeError`] saying which.
//!
//! The same start-up path accepts sockets from real systemd socket
//! activation.
//!
//! # Examples
//!
//! Inherit or bind listeners *before* calling `ready()`: once you are ready,
//! your parent stops accepting.
//!
//! ```no_run
//! use std::time::Duration;
//! use async_io::Async;
//! use seamless::handoff::{Options, Upgrader};
//! use seamless::{Shutdown, Tracker};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let shutdown = Shutdown::new();
//! let upgrader = Upgrader::new(&shutdown, Options::default())?;
//! let tracker = Tracker::new(&shutdown);
//!
//! // Inherited from the previous generation if there is one, bound if not.
//! let listener = upgrader.tcp_listener("http", "127.0.0.1:8080")?;
//! let mut listener = tracker.listen(Async::new(listener)?);
//! upgrader.ready()?;
//!
//! // Elsewhere, on SIGHUP (see the `signals` module):
//! # futures_lite::future::block_on(async {
//! match upgrader.upgrade().await {
//!     Ok(pid) => println!("generation {pid} took over; draining"),
//!     Err(e) => eprintln!("upgrade failed, still serving: {e}"),
//! }
//! # });
//! # Ok(()) }
//! ```

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::{TcpListener, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_io::{Async, Timer};
use rustix::net::{AddressFamily, SocketType};

use crate::shutdown::{lock, PhaseHook, Shutdown};
use crate::sys;

pub(crate) mod env;
mod inherit;
pub(crate) mod ready;
mod spawn;

pub use env::EnvError;
pub use ready::ReadyError;

use inherit::{wrong_type, Inherited, READY_PIPE_NAME};
use ready::{ReadyReader, ReadyStatus};
use spawn::NextChild;

/// How to start and judge the next generation.
///
/// ```
/// use std::time::Duration;
/// use seamless::handoff::Options;
///
/// let options = Options::default()
///     .ready_timeout(Duration::from_secs(10))
///     .pid_file("/run/myservice.pid");
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    program: Option<PathBuf>,
    args: Option<Vec<OsString>>,
    ready_timeout: Duration,
    drain_timeout: Duration,
    pid_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            program: None,
            args: None,
            ready_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            pid_file: None,
        }
    }
}

impl Options {
    /// The program to start (default: the executable this process was
    /// started from, resolved at start-up). A path, not searched in `PATH`.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// The full argument vector, `argv[0]` included (default: this
    /// process's own).
    pub fn args<I, A>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// How long the next generation has to become ready (default 60 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// The drain deadline this process gets once its successor is ready
    /// (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// A file each generation writes its pid to when it becomes ready
    /// (atomically: write, then rename).
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }
}

/// Why the inherited fds could not be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum InheritError {
    /// The socket-activation variables are malformed or not for us.
    Env(EnvError),
    /// A passed fd is not what the protocol says.
    BadFd {
        /// The fd number.
        fd: RawFd,
        /// Its name in `LISTEN_FDNAMES`.
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A passed fd was claimed as something it is not.
    WrongType {
        /// The fd number.
        fd: RawFd,
        /// Its name in `LISTEN_FDNAMES`.
        name: String,
        /// What the caller asked for.
        expected: &'static str,
        /// What it is.
        found: String,
    },
    /// Another [`Upgrader`] in this process already took the fds.
    AlreadyTaken,
    /// A syscall failed.
    Io(io::Error),
}

impl fmt::Display for InheritError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InheritError::Env(e) => write!(f, "bad socket-activation variables: {e}"),
            InheritError::BadFd { fd, name, problem } => {
                write!(f, "inherited fd {fd} (named {name:?}) {problem}")
            }
            InheritError::WrongType {
                fd,
                name,
                expected,
                found,
            } => write!(
                f,
                "inherited fd {fd} (named {name:?}) should be {expected} but is a {found}"
            ),
            InheritError::AlreadyTaken => {
                write!(
                    f,
                    "the inherited fds were already taken by another Upgrader"
                )
            }
            InheritError::Io(e) => write!(f, "taking the inherited fds: {e}"),
        }
    }
}

impl std::error::Error for InheritError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InheritError::Env(e) => Some(e),
            InheritError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Why an upgrade did not happen. In every case this process goes on
/// serving, untouched.
#[derive(Debug)]
#[non_exhaustive]
pub enum UpgradeError {
    /// This process has not called [`Upgrader::ready`] yet.
    NotReady,
    /// Another upgrade is in progress.
    InProgress,
    /// This process is already draining.
    ShuttingDown,
    /// The next generation could not be started.
    Spawn(io::Error),
    /// The next generation exited before it was ready.
    Exited(ExitStatus),
    /// The next generation was not ready in time; it was killed.
    Timeout(Duration),
    /// The next generation broke the readiness protocol; it was killed.
    Protocol(ReadyError),
    /// A syscall failed while waiting; the child was killed.
    Io(io::Error),
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeError::NotReady => write!(f, "not ready yet: call ready() first"),
            UpgradeError::InProgress => write!(f, "an upgrade is already in progress"),
            UpgradeError::ShuttingDown => write!(f, "already shutting down"),
            UpgradeError::Spawn(e) => write!(f, "could not start the next generation: {e}"),
            UpgradeError::Exited(status) => {
                write!(
                    f,
                    "the next generation exited before it was ready ({status})"
                )
            }
            UpgradeError::Timeout(t) => {
                write!(
                    f,
                    "the next generation was not ready within {t:?}; killed it"
                )
            }
            UpgradeError::Protocol(e) => write!(f, "{e}; killed it"),
            UpgradeError::Io(e) => write!(f, "waiting for the next generation: {e}"),
        }
    }
}

impl std::error::Error for UpgradeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpgradeError::Spawn(e) | UpgradeError::Io(e) => Some(e),
            UpgradeError::Protocol(e) => Some(e),
            _ => None,
        }
    }
}

/// Hands this process's listeners to its next generation. One per process.
///
/// Cloning is cheap; clones share everything.
#[derive(Clone)]
pub struct Upgrader {
    inner: Arc<Inner>,
}

struct Inner {
    shutdown: Shutdown,
    program: PathBuf,
    args: Vec<OsString>,
    options: Options,
    fds: Mutex<Fds>,
    ready: AtomicBool,
    upgrading: AtomicBool,
    has_parent: bool,
}

#[derive(Default)]
struct Fds {
    /// Inherited and not yet claimed; closed at `ready()`.
    unclaimed: Vec<(String, OwnedFd)>,
    /// Our copies of what the next generation gets; closed when draining
    /// starts, so a stopped service refuses connections instead of queueing.
    passing: Vec<(String, OwnedFd)>,
    ready_pipe: Option<OwnedFd>,
}

impl fmt::Debug for Upgrader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgrader")
            .field("program", &self.inner.program)
            .field("has_parent", &self.inner.has_parent)
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl Upgrader {
    /// Takes the fds this process inherited (from a previous generation or
    /// from systemd) and resolves the program to start next.
    ///
    /// Call it once, early in `main`, before anything else opens fds or
    /// starts a thread: in a new generation, it also takes over the
    /// start-up signals (SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR2), held
    /// back until now by a mask that threads started earlier would keep.
    /// They are delivered once handlers are installed, or take their default
    /// effect at [`ready`](Upgrader::ready).
    ///
    /// # Errors
    ///
    /// - [`InheritError::Env`]: `LISTEN_FDS`, `LISTEN_PID` or
    ///   `LISTEN_FDNAMES` is malformed, or `LISTEN_PID` is not this process.
    /// - [`InheritError::BadFd`]: a passed fd is closed, or not a socket.
    /// - [`InheritError::AlreadyTaken`]: called twice in one process.
    pub fn new(shutdown: &Shutdown, options: Options) -> Result<Upgrader, InheritError> {
        let Inherited {
            sockets,
            ready_pipe,
        } = inherit::take()?;
        if ready_pipe.is_some() {
            // Started by a previous generation, with the start-up signals
            // blocked: record them instead, so that threads started from
            // now on do not inherit a blocked mask.
            sys::signal::defer_startup_signals().map_err(InheritError::Io)?;
        }
        let program = match &options.program {
            Some(program) => program.clone(),
            None => std::env::current_exe().map_err(InheritError::Io)?,
        };
        let args = options
            .args
            .clone()
            .unwrap_or_else(|| std::env::args_os().collect());
        let inner = Arc::new(Inner {
            shutdown: shutdown.clone(),
            program,
            args,
            options,
            has_parent: ready_pipe.is_some(),
            fds: Mutex::new(Fds {
                unclaimed: sockets,
                passing: Vec::new(),
                ready_pipe,
            }),
            ready: AtomicBool::new(false),
            upgrading: AtomicBool::new(false),
        });
        let hook: Arc<dyn PhaseHook> = inner.clone();
        shutdown.add_hook(Arc::downgrade(&hook));
        Ok(Upgrader { inner })
    }

    /// Whether a seamless parent started this process (and is waiting for
    /// [`ready`](Upgrader::ready)).
    pub fn has_parent(&self) -> bool {
        self.inner.has_parent
    }

    /// Whether [`ready`](Upgrader::ready) has been called.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// A TCP listener named `name`: the inherited one if there is one, else
    /// a fresh one bound to `addr`. Either way it is passed on to the next
    /// generation under the same name.
    ///
    /// # Errors
    ///
    /// An inherited fd of that name that is not a listening TCP socket
    /// (`InvalidInput`, wrapping [`InheritError::WrongType`]), or a failed
    /// bind.
    pub fn tcp_listener(&self, name: &str, addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        let inherited = self.claim(name, "a listening TCP socket", |info| {
            matches!(info.family, AddressFamily::INET | AddressFamily::INET6)
                && info.socket_type == SocketType::STREAM
                && info.listening
        })?;
        let listener = match inherited {
            Some(fd) => TcpListener::from(fd),
            None => TcpListener::bind(addr)?,
        };
        self.pass(name, &listener)?;
        Ok(listener)
    }

    /// A Unix stream listener named `name`: inherited, or bound to `path`.
    ///
    /// # Errors
    ///
    /// As for [`tcp_listener`](Upgrader::tcp_listener).
    pub fn unix_listener(&self, name: &str, path: impl AsRef<Path>) -> io::Result<UnixListener> {
        let inherited = self.claim(name, "a listening Unix socket", |info| {
            info.family == AddressFamily::UNIX
                && info.socket_type == SocketType::STREAM
                && info.listening
        })?;
        let listener = match inherited {
            Some(fd) => UnixListener::from(fd),
            None => UnixListener::bind(path)?,
        };
        self.pass(name, &listener)?;
        Ok(listener)
    }

    /// A UDP socket named `name`: inherited, or bound to `addr`.
    ///
    /// # Errors
    ///
    /// As for [`tcp_listener`](Upgrader::tcp_listener).
    pub fn udp_socket(&self, name: &str, addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        let inherited = self.claim(name, "a UDP socket", |info| {
            matches!(info.family, AddressFamily::INET | AddressFamily::INET6)
                && info.socket_type == SocketType::DGRAM
        })?;
        let socket = match inherited {
            Some(fd) => UdpSocket::from(fd),
            None => UdpSocket::bind(addr)?,
        };
        self.pass(name, &socket)?;
        Ok(socket)
    }

    /// Takes the inherited socket named `name`, whatever its kind, without
    /// passing it on (register it again with [`add_fd`](Upgrader::add_fd)
    /// to do so).
    pub fn take_fd(&self, name: &str) -> Option<OwnedFd> {
        let mut fds = lock(&self.inner.fds);
        let index = fds.unclaimed.iter().position(|(n, _)| n == name)?;
        Some(fds.unclaimed.remove(index).1)
    }

    /// Passes a socket of your own to the next generation under `name`
    /// (it keeps its own copy; `fd` stays yours).
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `fd` is not a socket or the name is unusable.
    pub fn add_fd(&self, name: &str, fd: impl AsFd) -> io::Result<()> {
        sys::socket_info(fd.as_fd()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("only sockets can be passed on ({name:?}: {e})"),
            )
        })?;
        self.pass(name, fd)
    }

    /// Says this process is ready: closes inherited fds nobody claimed,
    /// writes the pid file, tells the parent (which then drains) or, without
    /// a parent, systemd. Calling it again does nothing.
    ///
    /// Claim or bind every listener *before* this: once you are ready, your
    /// parent stops accepting.
    ///
    /// # Errors
    ///
    /// Writing the pid file or the readiness pipe failed. A failed pipe
    /// write means the parent is gone or gave up on us.
    pub fn ready(&self) -> io::Result<()> {
        if self.inner.ready.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let pipe = {
            let mut fds = lock(&self.inner.fds);
            fds.unclaimed.clear();
            fds.ready_pipe.take()
        };
        // A start-up signal held back so far takes effect now: through the
        // handlers installed since, or with its default action (a SIGTERM
        // nobody handles ends us here, before we tell anyone we are ready).
        sys::signal::release_startup_signals(sys::signal::STARTUP_SIGNALS);
        sys::signal::unblock_startup_signals()?;
        if let Some(path) = &self.inner.options.pid_file {
            write_pid_file(path, std::process::id())?;
        }
        match pipe {
            Some(pipe) => ready::write_ready(&pipe),
            None => {
                sd::ready()?;
                Ok(())
            }
        }
    }

    /// Starts the next generation and waits until it is ready.
    ///
    /// On success this process starts draining (with the
    /// [`drain_timeout`](Options::drain_timeout)) and the future resolves to
    /// the child's pid. On failure the child is killed and reaped, this
    /// process goes on serving untouched, and the error says what happened.
    /// Under systemd it sends `RELOADING=1` first, then `MAINPID=` and
    /// `READY=1` for whichever process serves afterwards.
    ///
    /// # Errors
    ///
    /// See [`UpgradeError`].
    pub async fn upgrade(&self) -> Result<u32, UpgradeError> {
        let inner = &self.inner;
        if inner.shutdown.is_draining() {
            return Err(UpgradeError::ShuttingDown);
        }
        if !self.is_ready() {
            return Err(UpgradeError::NotReady);
        }
        if inner.upgrading.swap(true, Ordering::SeqCst) {
            return Err(UpgradeError::InProgress);
        }
        let _upgrading = ClearOnDrop(&inner.upgrading);
        let _ = sd::reloading();
        let outcome = self.start_next().await;
        match &outcome {
            Ok(pid) => {
                let _ = sd::main_pid_ready(*pid);
                inner.shutdown.graceful(inner.options.drain_timeout);
            }
            Err(_) => {
                let _ = sd::ready();
                // The child may have written the pid file before failing.
                if let Some(path) = &inner.options.pid_file {
                    let _ = write_pid_file(path, std::process::id());
                }
            }
        }
        outcome
    }

    /// Whether an upgrade is in progress.
    pub fn is_upgrading(&self) -> bool {
        self.inner.upgrading.load(Ordering::SeqCst)
    }

    /// The inherited socket named `name` if it passes `check`.
    fn claim(
        &self,
        name: &str,
        expected: &'static str,
        check: impl Fn(&sys::SocketInfo) -> bool,
    ) -> io::Result<Option<OwnedFd>> {
        let Some(fd) = self.take_fd(name) else {
            return Ok(None);
        };
        match sys::socket_info(fd.as_fd()) {
            Ok(info) if check(&info) => Ok(Some(fd)),
            _ => Err(wrong_type(name, &fd, expected)),
        }
    }

    fn pass(&self, name: &str, fd: impl AsFd) -> io::Result<()> {
        let copy = sys::dup_at_least(fd, 0)?;
        lock(&self.inner.fds).passing.push((name.to_owned(), copy));
        Ok(())
    }

    async fn start_next(&self) -> Result<u32, UpgradeError> {
        // The ready timeout covers everything from here, spawning included.
        let timeout = self.inner.options.ready_timeout;
        let expired = Timer::after(timeout);
        let (pipe_read, pipe_write) = sys::pipe_cloexec()
            .map_err(|e| UpgradeError::Spawn(spawn::context("creating the readiness pipe", e)))?;
        let mut child = {
            let fds = lock(&self.inner.fds);
            let mut passed: Vec<(&str, BorrowedFd<'_>)> = fds
                .passing
                .iter()
                .map(|(name, fd)| (name.as_str(), fd.as_fd()))
                .collect();
            passed.push((READY_PIPE_NAME, pipe_write.as_fd()));
            spawn::start(
                spawn::Program::Path(&self.inner.program),
                &self.inner.args,
                &passed,
            )
            .map_err(UpgradeError::Spawn)?
        };
        // Only the child may hold the write end, so its exit reads as EOF.
        drop(pipe_write);
        let waited = futures_lite::future::or(
            async {
                let pid = child.exec().await.map_err(UpgradeError::Spawn)?;
                wait_ready(pipe_read, &mut child).await.map(|()| pid)
            },
            async {
                expired.await;
                Err(UpgradeError::Timeout(timeout))
            },
        )
        .await;
        match waited {
            Ok(pid) => {
                child.release();
                Ok(pid)
            }
            Err(error) => {
                let status = child.kill_and_reap().await;
                Err(match (error, status) {
                    (UpgradeError::Protocol(ReadyError::ClosedEarly { .. }), Ok(status)) => {
                        UpgradeError::Exited(status)
                    }
                    (error, _) => error,
                })
            }
        }
    }
}

/// Removes the socket-activation variables from a command's environment.
///
/// They describe fds passed to *this* process and stay in its environment
/// (changing the environment of a running, multi-threaded process is not
/// safe). Programs you start yourself should not see them: use this on every
/// [`Command`](std::process::Command) you spawn. (`LISTEN_PID` would tell a
/// well-behaved program they are not its own anyway.) The next generation
/// started by [`Upgrader::upgrade`] gets fresh ones.
///
/// ```
/// use std::process::Command;
///
/// let mut command = Command::new("date");
/// seamless::handoff::remove_activation_env(&mut command);
/// assert_eq!(command.get_envs().count(), 3);
/// ```
pub fn remove_activation_env(command: &mut std::process::Command) -> &mut std::process::Command {
    for var in spawn::ACTIVATION_VARS {
        command.env_remove(var);
    }
    command
}

/// Reads the readiness pipe until the child says `ready`, closes it early,
/// or writes something else; or until the child exits (even if something
/// it started still holds the pipe open).
async fn wait_ready(pipe: OwnedFd, child: &mut NextChild) -> Result<(), UpgradeError> {
    let pipe = Async::new(pipe).map_err(UpgradeError::Io)?;
    let read = async {
        let mut reader = ReadyReader::new();
        let mut buf = [0u8; 64];
        loop {
            let n = pipe
                .read_with(|fd| sys::read(fd, &mut buf))
                .await
                .map_err(UpgradeError::Io)?;
            if n == 0 {
                return reader.finish().map_err(UpgradeError::Protocol);
            }
            match reader.feed(&buf[..n]) {
                Ok(ReadyStatus::Ready) => return Ok(()),
                Ok(ReadyStatus::Incomplete) => {}
                Err(e) => return Err(UpgradeError::Protocol(e)),
            }
        }
    };
    let exited = async {
        Err(match child.exited().await {
            Ok(status) => UpgradeError::Exited(status),
            Err(e) => UpgradeError::Io(e),
        })
    };
    // The pipe first: a child that said ready and then exited did say it.
    futures_lite::future::or(read, exited).await
}

/// Writes `pid` to `path` atomically: a reader sees the old pid or the new
/// one, never a partial file.
fn write_pid_file(path: &Path, pid: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{pid}.tmp"));
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path)
}

/// sd_notify with the `systemd` feature; nothing without it.
mod sd {
    #[cfg(feature = "systemd")]
    pub(super) use crate::systemd::{main_pid_ready, ready, reloading};

    #[cfg(not(feature = "systemd"))]
    pub(super) fn ready() -> std::io::Result<bool> {
        Ok(false)
    }

    #[cfg(not(feature = "systemd"))]
    pub(super) fn reloading() -> std::io::Result<bool> {
        Ok(false)
    }

    #[cfg(not(feature = "systemd"))]
    pub(super) fn main_pid_ready(_pid: u32) -> std::io::Result<bool> {
        Ok(false)
    }
}

struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl PhaseHook for Inner {
    fn on_draining(&self) {
        lock(&self.fds).passing.clear();
    }

    fn on_stopped(&self) {}
}
