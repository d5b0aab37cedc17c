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
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
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

pub(crate) mod channel;
pub(crate) mod env;
mod fds;
mod inherit;
pub(crate) mod ready;
mod spawn;

pub use env::{remove_activation_env, EnvError};
pub use inherit::InheritError;
pub use ready::ReadyError;

use crate::sd;
use fds::Fds;
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
    pid_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            program: None,
            args: None,
            ready_timeout: Duration::from_secs(60),
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

    /// A file each generation writes its pid to when it becomes ready
    /// (atomically: write, then rename).
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
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
    /// Unix socket files this generation listens on: removed on a final
    /// stop, kept after a handover.
    unix_paths: Mutex<Vec<PathBuf>>,
    readiness: Mutex<Readiness>,
    ready: AtomicBool,
    upgrading: AtomicBool,
    has_parent: bool,
}

/// How far [`Upgrader::ready`] has got, so a call after a failed one
/// resumes where it stopped instead of pretending to be done.
struct Readiness {
    /// Where to tell a seamless parent; closed once it is told.
    pipe: Option<OwnedFd>,
    /// The parent (or systemd) has been told.
    told: bool,
    done: bool,
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
    /// Socket-activation variables meant for another process (`LISTEN_PID`
    /// unset or not this process) are ignored, as systemd's own
    /// `sd_listen_fds()` does, and logged.
    ///
    /// # Errors
    ///
    /// - [`InheritError::Env`]: `LISTEN_FDS`, `LISTEN_PID` or
    ///   `LISTEN_FDNAMES` is malformed.
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
            fds: Mutex::new(Fds::new(sockets)),
            unix_paths: Mutex::new(Vec::new()),
            readiness: Mutex::new(Readiness {
                pipe: ready_pipe,
                told: false,
                done: false,
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

    /// Whether [`ready`](Upgrader::ready) has succeeded.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// A TCP listener named `name`: the inherited one if there is one, else
    /// a fresh one bound to `addr`. Either way it is passed on to the next
    /// generation under the same name.
    ///
    /// # Errors
    ///
    /// - `InvalidInput` for a name that cannot be passed on (empty, with a
    ///   `:`, not printable ASCII, longer than 255 bytes, starting with
    ///   `seamless-`, or already used), checked before anything is bound.
    /// - `InvalidInput`, wrapping [`InheritError::WrongType`], for an
    ///   inherited fd of that name that is not a listening TCP socket.
    /// - A failed bind.
    pub fn tcp_listener(&self, name: &str, addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        fds::check_name(name)?;
        let inherited = self.claim(name, "a listening TCP socket", |info| {
            matches!(info.family, AddressFamily::INET | AddressFamily::INET6)
                && info.socket_type == SocketType::STREAM
                && info.listening
        })?;
        let listener = match inherited {
            Some(fd) => TcpListener::from(fd),
            None => TcpListener::bind(addr).map_err(|e| bind_error(name, "an address", e))?,
        };
        self.pass_on(name, &listener)?;
        Ok(listener)
    }

    /// A Unix stream listener named `name`: inherited, or bound to `path`.
    ///
    /// The socket file's life follows the service's, not the process's: a
    /// hot restart keeps it (the next generation listens on the same
    /// socket), a final stop ([`Reason::Stop`](crate::Reason::Stop)) removes
    /// it once the coordinator has stopped. A stale file left by a process
    /// that crashed (a socket nothing accepts on) is replaced on a fresh
    /// start.
    ///
    /// # Errors
    ///
    /// As for [`tcp_listener`](Upgrader::tcp_listener); a bind error names
    /// the listener and the path, and says whether another server is
    /// listening there (`AddrInUse`) or the path is not a socket.
    pub fn unix_listener(&self, name: &str, path: impl AsRef<Path>) -> io::Result<UnixListener> {
        fds::check_name(name)?;
        let inherited = self.claim(name, "a listening Unix socket", |info| {
            info.family == AddressFamily::UNIX
                && info.socket_type == SocketType::STREAM
                && info.listening
        })?;
        let listener = match inherited {
            Some(fd) => UnixListener::from(fd),
            None => bind_unix(path.as_ref()).map_err(|e| bind_error(name, "the path", e))?,
        };
        self.pass_on(name, &listener)?;
        if let Some(bound) = listener.local_addr()?.as_pathname() {
            lock(&self.inner.unix_paths).push(bound.to_owned());
        }
        Ok(listener)
    }

    /// A UDP socket named `name`: inherited, or bound to `addr`.
    ///
    /// # Errors
    ///
    /// As for [`tcp_listener`](Upgrader::tcp_listener).
    pub fn udp_socket(&self, name: &str, addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        fds::check_name(name)?;
        let inherited = self.claim(name, "a UDP socket", |info| {
            matches!(info.family, AddressFamily::INET | AddressFamily::INET6)
                && info.socket_type == SocketType::DGRAM
        })?;
        let socket = match inherited {
            Some(fd) => UdpSocket::from(fd),
            None => UdpSocket::bind(addr).map_err(|e| bind_error(name, "an address", e))?,
        };
        self.pass_on(name, &socket)?;
        Ok(socket)
    }

    /// Takes the inherited socket named `name`, of any kind, if there is
    /// one. It is not passed on by this call: pass it (or a fresh socket, if
    /// there was none) with [`pass_on`](Upgrader::pass_on).
    ///
    /// For sockets the typed methods above do not cover (a Unix datagram or
    /// seqpacket socket, a netlink socket, ...).
    pub fn take_inherited(&self, name: &str) -> Option<OwnedFd> {
        lock(&self.inner.fds).take(name)
    }

    /// Passes a socket to every later generation under `name`. This process
    /// keeps `fd`; the library keeps a copy to pass on.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `fd` is not a socket, or for a name that cannot be
    /// passed on (empty, with a `:`, not printable ASCII, longer than 255
    /// bytes, starting with `seamless-`, or already used).
    pub fn pass_on(&self, name: &str, fd: impl AsFd) -> io::Result<()> {
        sys::socket_info(fd.as_fd()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("only sockets can be passed on ({name:?}: {e})"),
            )
        })?;
        lock(&self.inner.fds).pass(name, fd.as_fd())
    }

    /// Says this process is ready: closes inherited fds nobody claimed,
    /// tells the parent generation (which then drains) or, without one,
    /// systemd, and then writes the pid file.
    ///
    /// Claim or bind every listener *before* this: once you are ready, your
    /// parent stops accepting.
    ///
    /// If the parent is gone (it was killed while this process started),
    /// this process carries on as the only generation: it logs it and tells
    /// systemd it is the main process now. Calling `ready()` again after it
    /// succeeded does nothing; after it failed, it resumes where it stopped.
    ///
    /// # Errors
    ///
    /// Telling the parent failed for another reason than its being gone, or
    /// writing the pid file failed. This process is not ready then.
    pub fn ready(&self) -> io::Result<()> {
        let mut readiness = lock(&self.inner.readiness);
        if readiness.done {
            return Ok(());
        }
        lock(&self.inner.fds).close_unclaimed();
        // A start-up signal held back so far takes effect now: through the
        // handlers installed since, or with its default action (a SIGTERM
        // nobody handles ends us here, before we tell anyone we are ready).
        sys::signal::release_startup_signals(sys::signal::STARTUP_SIGNALS);
        sys::signal::unblock_startup_signals()?;
        if !readiness.told {
            match &readiness.pipe {
                Some(pipe) => tell_parent(pipe)?,
                None => {
                    sd::ready()?;
                }
            }
            readiness.told = true;
            readiness.pipe = None;
        }
        // Only now: a pid file must never name a generation its parent was
        // not told about.
        if let Some(path) = &self.inner.options.pid_file {
            write_pid_file(path, std::process::id()).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("writing the pid file {}: {e}", path.display()),
                )
            })?;
        }
        readiness.done = true;
        self.inner.ready.store(true, Ordering::SeqCst);
        tracing::info!(parent = self.inner.has_parent, "ready");
        Ok(())
    }

    /// Starts the next generation and waits until it is ready.
    ///
    /// On success this process starts draining (within the coordinator's
    /// [`drain_timeout`](Shutdown::drain_timeout), with
    /// [`Reason::Upgrade`](crate::Reason::Upgrade)) and the future resolves
    /// to the child's pid. On failure the child is killed and reaped, this
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
        let started = std::time::Instant::now();
        tracing::info!(program = %inner.program.display(), "upgrade: starting the next generation");
        let outcome = self.start_next().await;
        match &outcome {
            Ok(pid) => {
                tracing::info!(pid, elapsed = ?started.elapsed(), "upgrade: the next generation is ready; draining");
                let _ = sd::main_pid_ready(*pid);
                inner.shutdown.hand_over();
            }
            Err(error) => {
                tracing::warn!(%error, elapsed = ?started.elapsed(), "upgrade failed; still serving");
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
        let Some(fd) = self.take_inherited(name) else {
            return Ok(None);
        };
        match sys::socket_info(fd.as_fd()) {
            Ok(info) if check(&info) => Ok(Some(fd)),
            _ => Err(wrong_type(name, &fd, expected)),
        }
    }

    async fn start_next(&self) -> Result<u32, UpgradeError> {
        // The ready timeout covers everything from here, spawning included.
        let timeout = self.inner.options.ready_timeout;
        let expired = Timer::after(timeout);
        let (pipe_read, pipe_write) = sys::pipe_cloexec()
            .map_err(|e| UpgradeError::Spawn(spawn::context("creating the readiness pipe", e)))?;
        let mut child = {
            let fds = lock(&self.inner.fds);
            let mut passed: Vec<(&str, BorrowedFd<'_>)> = fds.passing().collect();
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

/// Binds a Unix listener at `path`, replacing a stale socket file: one that
/// is a socket but refuses connections (its server is gone). A live one is
/// left alone, and so is anything that is not a socket.
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;

    let in_use = match UnixListener::bind(path) {
        Ok(listener) => return Ok(listener),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => e,
        Err(e) => return Err(annotate(e, path, "")),
    };
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return Err(annotate(in_use, path, " (it exists and is not a socket)"));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing a stale Unix socket file");
            std::fs::remove_file(path)
                .map_err(|e| annotate(e, path, " (removing a stale socket)"))?;
            UnixListener::bind(path).map_err(|e| annotate(e, path, ""))
        }
        _ => Err(annotate(
            in_use,
            path,
            " (another server is listening on it)",
        )),
    }
}

fn annotate(e: io::Error, path: &Path, why: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}{why}", path.display()))
}

/// Names the listener in a bind error.
fn bind_error(name: &str, what: &str, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("listener {name:?}: cannot bind {what}: {e}"),
    )
}

/// Writes `ready` on the pipe to the parent. A parent that is gone (killed
/// while we started) is not an error: we carry on as the only generation.
fn tell_parent(pipe: &OwnedFd) -> io::Result<()> {
    match ready::write_ready(pipe) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            tracing::warn!("the parent generation is gone; carrying on as the only generation");
            let _ = sd::main_pid_ready(std::process::id());
            Ok(())
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("telling the parent generation we are ready: {e}"),
        )),
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
        lock(&self.fds).stop_passing();
        // The service's end, not a handover: systemd shows it deactivating.
        if self.shutdown.reason() == Some(crate::Reason::Stop) {
            let _ = sd::stopping();
        }
    }

    fn on_stopped(&self) {
        if self.shutdown.reason() != Some(crate::Reason::Stop) {
            return; // handed over: the next generation listens there
        }
        for path in lock(&self.unix_paths).drain(..) {
            use std::os::unix::fs::FileTypeExt;
            let is_socket =
                std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket());
            if is_socket {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed the Unix socket file")
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), %e, "could not remove the Unix socket file")
                    }
                }
            }
        }
    }
}
