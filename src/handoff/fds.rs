//! The fd inventory: what this generation inherited and has not claimed
//! yet, and what it passes on to the next generation, by name; and binding
//! a fresh listener when nothing was inherited.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use super::env::check_passable_name;
use crate::sys;

/// Names starting with this are the library's own (the readiness pipe, the
/// handoff channel); an application cannot pass an fd under one.
pub(crate) const RESERVED_PREFIX: &str = "seamless-";

#[derive(Debug, Default)]
pub(crate) struct Fds {
    /// Inherited and not yet claimed; closed at `ready()`.
    unclaimed: Vec<(String, OwnedFd)>,
    /// Our copies of what the next generation gets; closed when passing
    /// stops, so a stopped service refuses connections instead of queueing.
    passing: Vec<(String, OwnedFd)>,
}

impl Fds {
    pub(crate) fn new(inherited: Vec<(String, OwnedFd)>) -> Self {
        Fds {
            unclaimed: inherited,
            passing: Vec::new(),
        }
    }

    /// Takes the inherited fd named `name`, if it has not been taken yet.
    pub(crate) fn take(&mut self, name: &str) -> Option<OwnedFd> {
        let index = self.unclaimed.iter().position(|(n, _)| n == name)?;
        Some(self.unclaimed.remove(index).1)
    }

    /// Passes a copy of `fd` to every later generation under `name`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a name that cannot be passed (see [`check_name`])
    /// or one already passed on; the `dup` failing.
    pub(crate) fn pass(&mut self, name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        check_name(name)?;
        if self.passing.iter().any(|(n, _)| n == name) {
            return Err(invalid_name(name, "an fd is already passed on under it"));
        }
        let copy = sys::dup_at_least(fd, 0)?;
        self.passing.push((name.to_owned(), copy));
        Ok(())
    }

    /// What the next generation gets, in order.
    pub(crate) fn passing(&self) -> impl Iterator<Item = (&str, BorrowedFd<'_>)> {
        self.passing
            .iter()
            .map(|(name, fd)| (name.as_str(), fd.as_fd()))
    }

    /// The name the socket `id` is passed on under, if it is.
    pub(crate) fn name_of(&self, id: sys::SocketId) -> Option<&str> {
        self.passing
            .iter()
            .find(|(_, fd)| sys::socket_id(fd.as_fd()) == id)
            .map(|(name, _)| name.as_str())
    }

    pub(crate) fn close_unclaimed(&mut self) {
        self.unclaimed.clear();
    }

    pub(crate) fn stop_passing(&mut self) {
        self.passing.clear();
    }
}

/// Checks, where a name is given, that it can be passed on: not empty, no
/// `:`, printable ASCII, at most 255 bytes, and not one of the library's own
/// (`seamless-...`). A bad name found only at the next upgrade would make
/// every upgrade fail.
///
/// # Errors
///
/// `InvalidInput`, naming the name and what is wrong with it.
pub(crate) fn check_name(name: &str) -> io::Result<()> {
    if let Err(e) = check_passable_name(0, name) {
        let reason = match e {
            super::EnvError::BadName { reason, .. } => reason,
            _ => "it cannot be carried in LISTEN_FDNAMES",
        };
        return Err(invalid_name(name, reason));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(invalid_name(
            name,
            "names starting with \"seamless-\" are reserved for the library's own fds",
        ));
    }
    Ok(())
}

fn invalid_name(name: &str, reason: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("fd name {name:?} cannot be passed on: {reason}"),
    )
}

/// Binds a Unix listener at `path`, replacing a stale socket file: one that
/// is a socket but refuses connections (its server is gone). A live one is
/// left alone, and so is anything that is not a socket.
pub(super) fn bind_unix(path: &Path) -> io::Result<UnixListener> {
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
pub(super) fn bind_error(name: &str, what: &str, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("listener {name:?}: cannot bind {what}: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_where_given() {
        for (bad, says) in [
            ("", "empty"),
            ("admin:v2", "':'"),
            ("tab\there", "printable"),
            ("seamless-ready", "reserved"),
            ("seamless-anything", "reserved"),
        ] {
            let err = check_name(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            let message = err.to_string();
            assert!(message.contains(&format!("{bad:?}")), "{message}");
            assert!(message.contains(says), "{bad:?}: {message}");
        }
        assert!(check_name(&"x".repeat(256)).is_err());
        for good in ["http", "admin-v2", "a b", &"x".repeat(255)] {
            check_name(good).unwrap();
        }
    }

    #[test]
    fn a_name_is_passed_on_once() {
        let (a, _b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let mut fds = Fds::default();
        fds.pass("admin", a.as_fd()).unwrap();
        let err = fds.pass("admin", a.as_fd()).unwrap_err();
        assert!(err.to_string().contains("already passed on"), "{err}");
        assert!(fds.pass("admin:v2", a.as_fd()).is_err());
        assert_eq!(fds.passing().map(|(n, _)| n).collect::<Vec<_>>(), ["admin"]);
    }
}
