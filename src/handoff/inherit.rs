//! The child side: taking, once, the fds a parent or systemd passed, and
//! telling the parent when this generation is ready.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use super::env::{parse_listen_env, Activation, EnvError, ListenFd};
use super::ready;
use crate::{sd, sys};

/// The name of the readiness pipe among the passed fds.
pub(crate) const READY_PIPE_NAME: &str = "seamless-ready";

/// Why the inherited fds could not be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum InheritError {
    /// The socket-activation variables are malformed. (Variables meant for
    /// another process are ignored, not an error.)
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
    /// Another [`Upgrader`](super::Upgrader) in this process already took
    /// the fds.
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

/// What this process inherited.
#[derive(Debug, Default)]
pub(crate) struct Inherited {
    /// Named sockets, in the order they were passed.
    pub(crate) sockets: Vec<(String, OwnedFd)>,
    /// Where to say "ready" to the parent, if a seamless parent started us.
    pub(crate) ready_pipe: Option<OwnedFd>,
    /// The live handoff channel from the parent, if it opened one.
    pub(crate) channel: Option<OwnedFd>,
}

/// Reads the socket-activation variables and takes the fds they name,
/// marking each close-on-exec again.
pub(crate) fn take() -> Result<Inherited, InheritError> {
    let mut passed = sys::passed::Passed::claim().ok_or(InheritError::AlreadyTaken)?;
    let var = |name: &str| std::env::var_os(name).map(OsString::into_vec);
    let own_pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    let activation = parse_listen_env(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        own_pid,
    )
    .map_err(InheritError::Env)?;
    let listed = match activation {
        Activation::Fds(listed) => listed,
        Activation::NotOurs { listen_pid } => {
            // Never passed on either: the spawner sets its own.
            tracing::warn!(
                ?listen_pid,
                own_pid,
                "LISTEN_FDS is set but LISTEN_PID is not this process: \
                 the fds were meant for another process; ignored"
            );
            Vec::new()
        }
    };

    let from_a_parent = listed.iter().any(|listed| listed.name == READY_PIPE_NAME);
    // Every listed fd is ours from here, whatever is wrong with the others:
    // on an error they are closed, never left open (and inheritable) for a
    // process that carries on without them.
    let mut taken = Vec::with_capacity(listed.len());
    let mut missing = None;
    for ListenFd { fd, name } in listed {
        match passed.take(fd) {
            Some(owned) => taken.push((fd, name, owned)),
            None => {
                missing.get_or_insert(InheritError::BadFd {
                    fd,
                    name,
                    problem: "is not open",
                });
            }
        }
    }
    if from_a_parent {
        // Started by a previous generation, with the start-up signals
        // blocked: record them instead, so that threads started from now
        // on do not inherit a blocked mask.
        if let Err(e) = sys::signal::defer_startup_signals() {
            release_startup_signals();
            return Err(InheritError::Io(e));
        }
    }
    let checked = match missing {
        Some(error) => Err(error),
        None => check(taken),
    };
    if checked.is_err() && from_a_parent {
        release_startup_signals();
    }
    checked
}

/// No generation comes of this start-up: the start-up signals take their
/// usual course again, for a process that carries on without an upgrader.
fn release_startup_signals() {
    sys::signal::release_startup_signals(sys::signal::STARTUP_SIGNALS);
    let _ = sys::signal::unblock_startup_signals();
}

/// Sorts the taken fds into sockets, the readiness pipe and the handoff
/// channel, checking each; marks each close-on-exec again.
fn check(taken: Vec<(RawFd, String, OwnedFd)>) -> Result<Inherited, InheritError> {
    let mut inherited = Inherited::default();
    for (fd, name, owned) in taken {
        let bad = |problem: &'static str| InheritError::BadFd {
            fd,
            name: name.clone(),
            problem,
        };
        sys::set_cloexec(owned.as_fd(), true).map_err(InheritError::Io)?;
        if name == READY_PIPE_NAME {
            if !sys::is_fifo(&owned) {
                return Err(bad("is not a pipe"));
            }
            inherited.ready_pipe = Some(owned);
        } else if name == super::relay::CHANNEL_NAME {
            // Checked by the receiver (a unix seqpacket socket).
            inherited.channel = Some(owned);
        } else {
            if sys::socket_info(owned.as_fd()).is_err() {
                return Err(bad("is not a socket"));
            }
            inherited.sockets.push((name, owned));
        }
    }
    Ok(inherited)
}

/// Writes `ready` on the pipe to the parent. A parent that is gone (killed
/// while we started) is not an error: we carry on as the only generation.
pub(super) fn tell_parent(pipe: &OwnedFd) -> io::Result<()> {
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

/// Writes `pid` to `path` atomically: a reader sees the old pid or the new
/// one, never a partial file.
pub(super) fn write_pid_file(path: &Path, pid: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{pid}.tmp"));
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path)
}

/// An fd that claims to be what `expected` says but is not.
pub(crate) fn wrong_type(name: &str, fd: &OwnedFd, expected: &'static str) -> io::Error {
    use std::os::fd::AsRawFd;
    let found = match sys::socket_info(fd.as_fd()) {
        Ok(info) => format!("{:?} {:?} socket", info.family, info.socket_type),
        Err(e) => format!("unusable ({e})"),
    };
    io::Error::new(
        io::ErrorKind::InvalidInput,
        InheritError::WrongType {
            fd: fd.as_raw_fd(),
            name: name.to_owned(),
            expected,
            found,
        },
    )
}
