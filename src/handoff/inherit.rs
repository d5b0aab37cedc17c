//! The child side: taking, once, the fds a parent or systemd passed.
//!
//! # Safety
//!
//! The socket-activation protocol hands the fds it names to this process.
//! We take ownership of each exactly once per process (guarded by
//! [`TAKEN`]), and only after checking that the number is open.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::{AtomicBool, Ordering};

use super::env::{parse_listen_env, ListenFd};
use super::InheritError;
use crate::sys;

/// The name of the readiness pipe among the passed fds.
pub(crate) const READY_PIPE_NAME: &str = "seamless-ready";

static TAKEN: AtomicBool = AtomicBool::new(false);

/// What this process inherited.
#[derive(Debug, Default)]
pub(crate) struct Inherited {
    /// Named sockets, in the order they were passed.
    pub(crate) sockets: Vec<(String, OwnedFd)>,
    /// Where to say "ready" to the parent, if a seamless parent started us.
    pub(crate) ready_pipe: Option<OwnedFd>,
}

/// Reads the socket-activation variables and takes the fds they name,
/// marking each close-on-exec again.
pub(crate) fn take() -> Result<Inherited, InheritError> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(InheritError::AlreadyTaken);
    }
    let var = |name: &str| std::env::var_os(name).map(OsString::into_vec);
    let listed = parse_listen_env(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        rustix::process::getpid().as_raw_nonzero().get() as u32,
    )
    .map_err(InheritError::Env)?;

    let mut inherited = Inherited::default();
    for ListenFd { fd, name } in listed {
        let bad = |problem: &'static str| InheritError::BadFd {
            fd,
            name: name.clone(),
            problem,
        };
        // SAFETY: only used to ask whether the number is open; nothing is
        // read through it if it is not.
        if !sys::is_open(unsafe { BorrowedFd::borrow_raw(fd) }) {
            return Err(bad("is not open"));
        }
        // SAFETY: the number is open and was passed to this process, which
        // takes it once (see the module docs).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        sys::set_cloexec(owned.as_fd(), true).map_err(InheritError::Io)?;
        if name == READY_PIPE_NAME {
            if !sys::is_fifo(&owned) {
                return Err(bad("is not a pipe"));
            }
            inherited.ready_pipe = Some(owned);
        } else {
            if sys::socket_info(owned.as_fd()).is_err() {
                return Err(bad("is not a socket"));
            }
            inherited.sockets.push((name, owned));
        }
    }
    Ok(inherited)
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
