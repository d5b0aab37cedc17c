//! Hot restart: start the next generation with the listening sockets
//! inherited, wait until it is ready, then drain this one.
//!
//! # The invariant
//!
//! At any moment there are one or more generations alive, and **at most one
//! of them is not ready**. Every alive generation holds the listening
//! sockets (they are the same sockets, shared), but only the newest ready one
//! accepts: an older one stops accepting as soon as its successor says it
//! is ready, keeps its copies (not accepting) for the successor's probation,
//! and drains within its own deadline. A successor that crashes, writes
//! garbage or never becomes ready is killed, and the old generation goes on
//! serving as if nothing happened.
//!
//! # How it works
//!
//! 1. [`Upgrader::upgrade`] refuses if an upgrade is already running, this
//!    process is not ready itself, or a stop was asked for.
//! 2. It starts the program this process was started from (resolved at
//!    start-up, so a replaced binary is picked up) with the same arguments
//!    and environment, and the registered fds at 3, 4, ..., described by the
//!    systemd socket-activation variables `LISTEN_FDS`, `LISTEN_FDNAMES` and
//!    `LISTEN_PID` (the child's own pid, written in the child before exec).
//!    One more fd, named `seamless-ready`, is the readiness pipe, and one
//!    more, the live handoff's channel, if a listener opted in or the
//!    application passes state on. Nothing else leaks in. On Linux the
//!    child is created on a short-lived thread with
//!    `clone(CLONE_VM|CLONE_VFORK)`, without copying this process's memory
//!    (elsewhere that thread forks); the executor never waits for its exec,
//!    and the ready timeout counts from the start of the upgrade.
//! 3. The child's [`Upgrader::new`] takes the fds; its listeners come back by
//!    name; it calls [`Upgrader::ready`], which writes `ready` on the pipe.
//! 4. The parent then starts draining (its [`Shutdown`] goes to
//!    `Draining`) and watches the child for the
//!    [probation](Options::probation) time: if it dies then, a replacement
//!    starts from this process's own executable. `upgrade` resolves to the
//!    child's pid once probation is over (or the child exited cleanly). On
//!    a child exit before ready, a timeout or garbage it kills and reaps the
//!    child instead and resolves to an [`UpgradeError`] saying which.
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

use async_io::Timer;
use futures_lite::future;
use rustix::net::{AddressFamily, SocketType};

use crate::shutdown::{lock, PhaseHook, Shutdown};
use crate::sys;

pub(crate) mod channel;
pub(crate) mod env;
mod fds;
mod inherit;
mod next;
pub(crate) mod ready;
mod relay;
mod spawn;

pub use env::{remove_activation_env, EnvError};
pub use inherit::InheritError;
pub use next::UpgradeError;
pub use ready::ReadyError;
pub use relay::HandoverStats;

use crate::conn::handover::Handover;
use crate::conn::{Accept, TrackedListener};
use crate::sd;
use channel::{Acks, Sender};
use fds::Fds;
use fds::{bind_error, bind_unix};
use inherit::{tell_parent, write_pid_file, wrong_type, Inherited, READY_PIPE_NAME};
use relay::Relay;

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
    probation: Duration,
    pid_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            program: None,
            args: None,
            ready_timeout: Duration::from_secs(60),
            probation: Duration::from_secs(5),
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

    /// How long a new generation is watched after it became ready
    /// (default 5 s; zero turns probation off).
    ///
    /// Meanwhile this (old) generation keeps its copies of the listening
    /// sockets open, not accepting, so that the kernel queues new
    /// connections rather than refusing them if the new generation dies.
    /// If it dies (killed by a signal, or exits with a failure) within the
    /// probation time, this generation starts a replacement from **its
    /// own** executable (opened at start-up, so a bad binary that replaced
    /// it on disk does not matter) with the same sockets, and that one
    /// serves: a build that crashes on its first requests cannot take the
    /// service down. The upgrade's future resolves at the end of probation,
    /// with [`UpgradeError::DiedInProbation`] if a replacement was needed.
    ///
    /// Why 5 s: a build that crashes on its first requests does so within
    /// moments under any real traffic, and the cost of watching is only
    /// that the old generation, idle and not accepting, stays alive that
    /// long (probation holds off its [`Stopped`](crate::Phase::Stopped),
    /// within its drain deadline). A crash after that is a bug for the
    /// service manager's restart policy, not for a rollback.
    pub fn probation(mut self, probation: Duration) -> Self {
        self.probation = probation;
        self
    }

    /// A file each generation writes its pid to when it becomes ready
    /// (atomically: write, then rename).
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
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
    /// This process's own executable and arguments, opened and read at
    /// start-up: what replaces a new generation that dies in probation.
    own_exe: Option<OwnedFd>,
    own_args: Vec<OsString>,
    /// The pid of the generation the running upgrade has made ready, for
    /// observers ([`SignalHandler`](crate::signals::SignalHandler)) that
    /// report it before probation ends.
    ready_child: Mutex<Option<u32>>,
    ready_child_set: event_listener::Event,
    /// The live handoff: channels to the predecessor and the successor.
    relay: Arc<Relay>,
    /// Makes the application state sent to each next generation.
    state: Mutex<Option<StateProvider>>,
}

type StateProvider = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

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
    /// - [`InheritError::Io`]: this process's executable could not be
    ///   found, or the start-up signals could not be recorded.
    ///
    /// On an error about the fds, every fd that was listed is closed; on
    /// any error after the variables were read, the start-up signals have
    /// their usual effect: a process that carries on without an upgrader
    /// is not left with them blocked. (Malformed variables name no fd to
    /// close: nothing is touched.)
    pub fn new(shutdown: &Shutdown, options: Options) -> Result<Upgrader, InheritError> {
        let Inherited {
            sockets,
            ready_pipe,
            channel,
        } = inherit::take()?;
        let program = match &options.program {
            Some(program) => program.clone(),
            None => std::env::current_exe().map_err(InheritError::Io)?,
        };
        let args = options
            .args
            .clone()
            .unwrap_or_else(|| std::env::args_os().collect());
        // Opened now, before a deploy can replace the file.
        let own_exe = sys::process::open_current_exe()
            .inspect_err(|e| tracing::warn!(%e, "cannot open this process's executable: no replacement in probation"))
            .ok();
        let inner = Arc::new(Inner {
            shutdown: shutdown.clone(),
            program,
            args,
            options,
            own_exe,
            own_args: std::env::args_os().collect(),
            ready_child: Mutex::new(None),
            ready_child_set: event_listener::Event::new(),
            relay: Relay::new(shutdown, channel),
            state: Mutex::new(None),
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

    /// Starts the next generation, waits until it is ready, hands over to
    /// it, and watches it for the [probation](Options::probation) time.
    ///
    /// Once the child is ready this process starts draining (within the
    /// coordinator's [`drain_timeout`](Shutdown::drain_timeout), with
    /// [`Reason::Upgrade`](crate::Reason::Upgrade)); the future resolves to
    /// the child's pid when its probation is over. Keep polling it until
    /// then: it holds off this process's [`Stopped`](crate::Phase::Stopped)
    /// so the sockets stay open for a replacement.
    ///
    /// On failure the child is killed and reaped, this process goes on
    /// serving untouched, and the error says what happened. A stop asked
    /// for meanwhile (a signal, [`Shutdown::graceful`],
    /// [`Shutdown::immediate`]) aborts the upgrade: the child is killed, or
    /// told to stop too if it was ready already ([`UpgradeError::Aborted`]).
    /// Once the child has taken over (this process drains, the child is in
    /// its probation), a stop ends this process only: the child serves on,
    /// without a replacement should it die.
    /// Under systemd it sends `RELOADING=1` first, then `MAINPID=` and
    /// `READY=1` for whichever process serves afterwards.
    ///
    /// # Errors
    ///
    /// See [`UpgradeError`].
    pub async fn upgrade(&self) -> Result<u32, UpgradeError> {
        let inner = &self.inner;
        if inner.shutdown.is_draining() || inner.shutdown.reason().is_some() {
            return Err(UpgradeError::ShuttingDown);
        }
        if !self.is_ready() {
            return Err(UpgradeError::NotReady);
        }
        if inner.upgrading.swap(true, Ordering::SeqCst) {
            return Err(UpgradeError::InProgress);
        }
        let _upgrading = ClearOnDrop(&inner.upgrading);
        // Until the upgrade has settled, this process does not stop: an
        // aborted child is reaped, a ready one watched.
        let _guard = inner.shutdown.guard();
        *lock(&inner.ready_child) = None;
        let _ = sd::reloading();
        let started = std::time::Instant::now();
        tracing::info!(program = %inner.program.display(), "upgrade: starting the next generation");

        let program = spawn::Program::Path(&inner.program);
        let attempt = self.start_ready(program, &inner.args);
        let stop = inner.shutdown.stop_requested();
        let outcome = future::or(async { Some(attempt.await) }, async {
            stop.await;
            None // the attempt is dropped: its child is killed and reaped
        })
        .await;
        let (pid, mut child, outbound) = match outcome {
            Some(Ok(ready)) => ready,
            Some(Err(error)) => return Err(self.rolled_back(error, started)),
            None => return Err(self.rolled_back(UpgradeError::Aborted, started)),
        };
        if !inner.shutdown.claim_handover() {
            // Ready just as the service was told to stop: it stops too. Our
            // end of the handoff channel closes first, so that the child's
            // drain does not wait for it while we wait for the child.
            drop(outbound);
            let signal = match inner.shutdown.is_stopped() {
                true => rustix::process::Signal::QUIT,
                false => rustix::process::Signal::TERM,
            };
            tracing::warn!(
                pid,
                ?signal,
                "upgrade: a stop was asked for; stopping the new generation too"
            );
            child.signal(signal);
            match inner.shutdown.deadline() {
                Some(deadline) => {
                    future::or(async { drop(child.exited().await) }, async {
                        Timer::at(deadline).await;
                    })
                    .await
                }
                None => drop(child.exited().await),
            }
            // The child wrote its pid there when it was ready; this process
            // is the one still draining.
            if let Some(path) = &inner.options.pid_file {
                let _ = write_pid_file(path, std::process::id());
            }
            return Err(UpgradeError::Aborted);
        }
        tracing::info!(pid, elapsed = ?started.elapsed(), "upgrade: the next generation is ready; draining");
        let _ = sd::main_pid_ready(pid);
        if let Some((sender, acks)) = outbound {
            inner.relay.set_outbound(sender, acks);
        }
        // A stop asked for from here on ends this process only: the child
        // is the service, and serves on (it is not killed with us either).
        inner.shutdown.hand_over();
        child.serves();
        *lock(&inner.ready_child) = Some(pid);
        inner.ready_child_set.notify(usize::MAX);

        let outcome = match next::probation(&mut child, inner.options.probation).await {
            None => {
                tracing::info!(pid, "upgrade: probation passed");
                child.release();
                Ok(pid)
            }
            // Asked to stop meanwhile (the whole service, say): nothing is
            // started again behind the stop.
            Some(status) if inner.shutdown.stop_asked() => Err(UpgradeError::DiedInProbation {
                pid,
                status,
                replacement: Err(Box::new(UpgradeError::ShuttingDown)),
            }),
            Some(status) => Err(self.replace(pid, status).await),
        };
        // The next generation holds the sockets now; ours are not needed.
        lock(&inner.fds).stop_passing();
        outcome
    }

    /// Starts `program` with `args` and the passed fds (and a handoff
    /// channel, if a listener opted in), sends it the application state
    /// meanwhile, and waits until it is ready.
    async fn start_ready(
        &self,
        program: spawn::Program<'_>,
        args: &[OsString],
    ) -> Result<(u32, spawn::NextChild, Option<(Sender, Acks)>), UpgradeError> {
        let inner = &self.inner;
        let (ours, theirs) = match self.open_channel() {
            Some((ours, theirs)) => (Some(ours), Some(theirs)),
            None => (None, None),
        };
        let outbound = ours.and_then(|fd| {
            Sender::new(fd)
                .inspect_err(|e| tracing::warn!(%e, "the handoff channel is unusable"))
                .ok()
        });
        let started = next::start_ready(inner.options.ready_timeout, |ready_pipe| {
            let fds = lock(&inner.fds);
            let mut passed: Vec<(&str, BorrowedFd<'_>)> = fds.passing().collect();
            passed.push((READY_PIPE_NAME, ready_pipe));
            if let Some(theirs) = &theirs {
                passed.push((relay::CHANNEL_NAME, theirs.as_fd()));
            }
            let child = spawn::start(program, args, &passed);
            // The child's end is the child's alone now, so that its exit
            // ends the channel.
            drop(theirs);
            child
        });
        // The state goes while the child starts: it may wait for it before
        // it says it is ready. Always sent (empty if there is none), so that
        // the child never waits for nothing.
        let send_state = async {
            if let Some((sender, _)) = &outbound {
                let provider = lock(&inner.state).clone();
                let state = provider.map_or_else(Vec::new, |make| make());
                let sent = future::or(sender.send_app_state(&state), async {
                    Timer::after(inner.options.ready_timeout).await;
                    Err(io::ErrorKind::TimedOut.into())
                });
                if let Err(e) = sent.await {
                    tracing::warn!(%e, "sending the application state to the next generation");
                }
            }
        };
        let (started, ()) = future::zip(started, send_state).await;
        started.map(|(pid, child)| (pid, child, outbound))
    }

    /// A handoff channel for the next generation, if it needs one: a
    /// listener opted in, or the application passes its state on.
    fn open_channel(&self) -> Option<(OwnedFd, OwnedFd)> {
        let wanted = self.inner.relay.wanted() || lock(&self.inner.state).is_some();
        if !wanted {
            return None;
        }
        channel::pair()
            .inspect_err(
                |e| tracing::warn!(%e, "no handoff channel: idle connections will be closed"),
            )
            .ok()
    }

    /// After a failed upgrade: this process serves on, and says so.
    fn rolled_back(&self, error: UpgradeError, started: std::time::Instant) -> UpgradeError {
        tracing::warn!(%error, elapsed = ?started.elapsed(), "upgrade failed; still serving");
        if self.inner.shutdown.reason().is_none() {
            // MAINPID too: a child that failed may have claimed it.
            let _ = sd::main_pid_ready(std::process::id());
            // The child may have written the pid file before failing.
            if let Some(path) = &self.inner.options.pid_file {
                let _ = write_pid_file(path, std::process::id());
            }
        }
        error
    }

    /// The new generation `pid` died in probation: starts a replacement
    /// from this process's own executable, with its own arguments and the
    /// same sockets.
    async fn replace(&self, pid: u32, status: ExitStatus) -> UpgradeError {
        let inner = &self.inner;
        tracing::error!(pid, %status, "upgrade: the new generation died in probation; starting a replacement");
        let _ = sd::status(&format!(
            "generation {pid} died in probation ({status}); starting a replacement"
        ));
        let replacement = match &inner.own_exe {
            Some(exe) => {
                let program = spawn::Program::Open(exe.as_fd());
                let attempt = self.start_ready(program, &inner.own_args);
                let stop = inner.shutdown.stop_requested();
                future::or(attempt, async {
                    stop.await;
                    // The attempt is dropped: its child is killed and reaped.
                    Err(UpgradeError::ShuttingDown)
                })
                .await
            }
            None => Err(UpgradeError::Spawn(io::Error::new(
                io::ErrorKind::NotFound,
                "this process's own executable could not be opened at start-up",
            ))),
        };
        let replacement = match replacement {
            Ok((new, child, _)) if inner.shutdown.stop_asked() => {
                // Ready just as this process was asked to stop: nothing
                // serves again behind the stop.
                child.signal(rustix::process::Signal::TERM);
                child.release();
                tracing::warn!(
                    new,
                    "upgrade: a stop was asked for; the replacement is stopped too"
                );
                Err(Box::new(UpgradeError::ShuttingDown))
            }
            Ok((new, child, outbound)) => {
                child.release();
                if let Some((sender, acks)) = outbound {
                    inner.relay.set_outbound(sender, acks);
                }
                tracing::warn!(new, "upgrade: the replacement is ready and serves");
                let _ = sd::main_pid_ready(new);
                Ok(new)
            }
            Err(e) => {
                tracing::error!(%e, "upgrade: the replacement failed; nothing serves once this process has drained");
                Err(Box::new(e))
            }
        };
        UpgradeError::DiedInProbation {
            pid,
            status,
            replacement,
        }
    }

    /// Opts `listener` in to the **live handoff**: after a successful
    /// upgrade, the drain hands its idle (and new) connections, alive, to
    /// the next generation instead of closing them, and connections the
    /// previous generation handed over come out of its
    /// [`accept`](TrackedListener::accept) first, like fresh ones.
    ///
    /// A client that pauses between requests then loses nothing to a
    /// restart: no close, so no keep-alive race and no reconnect. The
    /// kernel's receive queue goes with the socket, so a request already on
    /// the wire is read by the next generation. Busy connections finish
    /// their request first; connections the next generation does not take
    /// (it died, never reads, or the deadline comes first) fall back to the
    /// graceful close, and are counted in
    /// [`handover_stats`](Upgrader::handover_stats).
    ///
    /// **Only for protocols that keep no per-connection state a fresh
    /// process would not have.** Handed over raw, a TLS connection, an
    /// HTTP/2 connection (its header tables), a WebSocket after its upgrade
    /// or a connection with an authenticated session in memory is silently
    /// corrupted: leave such listeners out (the default), or
    /// [decline](crate::Tracked::decline_handover) the connection, or carry
    /// small state across with
    /// [`set_handover_state`](crate::Tracked::set_handover_state). A
    /// connection that moves on gets no goodbye:
    /// [`will_close`](crate::Tracked::will_close) tells the protocol
    /// whether to say one (HTTP/1 `Connection: close`).
    ///
    /// Call it before [`ready`](Upgrader::ready), on a listener made from
    /// [`tcp_listener`](Upgrader::tcp_listener) or
    /// [`unix_listener`](Upgrader::unix_listener), tracked with a tracker of
    /// this upgrader's [`Shutdown`].
    ///
    /// # Errors
    ///
    /// - [`io::ErrorKind::Unsupported`] where the platform cannot pass
    ///   connections (no unix `SOCK_SEQPACKET`, e.g. macOS).
    /// - [`io::ErrorKind::InvalidInput`] if the listener is not one this
    ///   upgrader passes on, is closed, or is tracked with another
    ///   coordinator.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use seamless::conn::Async;
    /// use seamless::handoff::{Options, Upgrader};
    /// use seamless::{Shutdown, Tracker};
    ///
    /// # fn main() -> std::io::Result<()> {
    /// let shutdown = Shutdown::new();
    /// let upgrader = Upgrader::new(&shutdown, Options::default()).map_err(std::io::Error::other)?;
    /// let tracker = Tracker::new(&shutdown);
    /// let listener = upgrader.tcp_listener("http", "127.0.0.1:8080")?;
    /// let mut listener = tracker.listen(Async::new(listener)?);
    /// upgrader.hand_over(&mut listener)?; // idle connections survive restarts
    /// upgrader.ready()?;
    /// # Ok(()) }
    /// ```
    pub fn hand_over<L: Accept + AsFd>(&self, listener: &mut TrackedListener<L>) -> io::Result<()> {
        if !channel::AVAILABLE {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this platform cannot pass connections between processes (no unix SOCK_SEQPACKET)",
            ));
        }
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
        if !listener.tracker().shutdown().same(&self.inner.shutdown) {
            return Err(invalid(
                "the listener is tracked with another Shutdown than the upgrader's",
            ));
        }
        let Some(socket) = listener.get_ref() else {
            return Err(invalid("the listener is closed"));
        };
        let id = sys::socket_id(socket.as_fd());
        let name = lock(&self.inner.fds)
            .name_of(id)
            .map(str::to_owned)
            .ok_or_else(|| {
                invalid("the listener is not one this upgrader passes on (make it with tcp_listener or unix_listener)")
            })?;
        self.inner.relay.add_listener(&name);
        listener.set_handover(Handover {
            successor: self.inner.relay.clone(),
            listener: name.into(),
        });
        Ok(())
    }

    /// Passes the application's state to every next generation: `make` is
    /// called at each upgrade, and what it returns (at most 64 MiB) goes
    /// over the handoff channel while the next generation starts. Caches,
    /// counters, session-ticket keys: what a fresh process would otherwise
    /// have to rebuild. It reads them with
    /// [`inherited_state`](Upgrader::inherited_state).
    pub fn pass_state(&self, make: impl Fn() -> Vec<u8> + Send + Sync + 'static) {
        *lock(&self.inner.state) = Some(Arc::new(make));
    }

    /// The state the previous generation passed with
    /// [`pass_state`](Upgrader::pass_state): waits until it has arrived.
    /// `None` at once without a previous generation (or one that opened no
    /// handoff channel), `None` too if it passed none. Await it before
    /// [`ready`](Upgrader::ready) to start with it.
    pub async fn inherited_state(&self) -> Option<Vec<u8>> {
        future::poll_fn(|cx| self.inner.relay.poll_app_state(cx)).await
    }

    /// What the live handoff did in this generation so far.
    pub fn handover_stats(&self) -> HandoverStats {
        self.inner.relay.stats()
    }

    /// The generation the running upgrade has made ready, if it has.
    // For the signal handler's events.
    #[cfg_attr(not(feature = "signals"), allow(dead_code))]
    pub(crate) fn ready_child(&self) -> Option<u32> {
        *lock(&self.inner.ready_child)
    }

    /// Notified when [`ready_child`](Upgrader::ready_child) is set.
    #[cfg_attr(not(feature = "signals"), allow(dead_code))]
    pub(crate) fn ready_child_changed(&self) -> event_listener::EventListener {
        self.inner.ready_child_set.listen()
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
}

struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl PhaseHook for Inner {
    fn on_draining(&self) {
        // The service's end, not a handover (where the sockets stay open
        // through probation): systemd shows it deactivating.
        if self.shutdown.reason() == Some(crate::Reason::Stop) {
            lock(&self.fds).stop_passing();
            let _ = sd::stopping();
        }
    }

    fn on_stopped(&self) {
        lock(&self.fds).stop_passing();
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
