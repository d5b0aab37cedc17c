//! Socket syscalls: half-closes, draining a receive queue, type checks.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use rustix::io::{fcntl_dupfd_cloexec, fcntl_getfd, fcntl_setfd, Errno, FdFlags};
use rustix::net::{self, AddressFamily, RecvFlags, SocketType};

pub(crate) use rustix::net::Shutdown as How;

/// `shutdown(2)` on a connected socket. A socket that is already
/// disconnected (`ENOTCONN`) counts as done.
///
/// Never call this on a listening socket: copies handed to another process
/// share it, and `SHUT_RD` on any copy stops all of them.
pub(crate) fn shutdown(fd: BorrowedFd<'_>, how: How) -> io::Result<()> {
    match net::shutdown(fd, how) {
        Ok(()) | Err(Errno::NOTCONN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reads and throws away whatever is queued on `fd` right now, without
/// blocking. Returns how many bytes were discarded.
///
/// Closing a socket with unread data makes the kernel send an RST, which
/// makes the peer lose data it has not read yet; discarding first avoids it.
pub(crate) fn discard_queued(fd: BorrowedFd<'_>) -> usize {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    // Bounded: a peer streaming at full speed cannot keep us here.
    for _ in 0..64 {
        match net::recv(fd, &mut buf, RecvFlags::DONTWAIT) {
            Ok((0, _)) => break,
            Ok((n, _)) => total += n,
            Err(Errno::INTR) => continue,
            Err(_) => break,
        }
    }
    total
}

/// What an fd turned out to be, for checking inherited sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocketInfo {
    pub(crate) socket_type: SocketType,
    pub(crate) family: AddressFamily,
    /// Whether it is a listening socket.
    pub(crate) listening: bool,
}

/// Checks that `fd` is open and is a socket, and tells its type and family.
pub(crate) fn socket_info(fd: BorrowedFd<'_>) -> io::Result<SocketInfo> {
    let socket_type = net::sockopt::socket_type(fd)?;
    let family = net::sockopt::socket_domain(fd)?;
    // Not every kind of socket supports SO_ACCEPTCONN; those don't listen.
    let listening = net::sockopt::socket_acceptconn(fd).unwrap_or(false);
    Ok(SocketInfo {
        socket_type,
        family,
        listening,
    })
}

/// Whether `fd` refers to an open file description.
pub(crate) fn is_open(fd: BorrowedFd<'_>) -> bool {
    fcntl_getfd(fd).is_ok()
}

/// Sets or clears `FD_CLOEXEC`.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, cloexec: bool) -> io::Result<()> {
    let mut flags = fcntl_getfd(fd)?;
    flags.set(FdFlags::CLOEXEC, cloexec);
    fcntl_setfd(fd, flags)?;
    Ok(())
}

/// Duplicates `fd` to the lowest free number at or above `min`, `CLOEXEC`.
pub(crate) fn dup_at_least(fd: impl AsFd, min: RawFd) -> io::Result<OwnedFd> {
    Ok(fcntl_dupfd_cloexec(fd, min)?)
}

/// Which socket an fd refers to, whatever number names it: the device and
/// inode of its file description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocketId {
    dev: u64,
    ino: u64,
}

impl SocketId {
    /// Matches no socket: inode 0 is never allocated.
    pub(crate) const NONE: SocketId = SocketId { dev: 0, ino: 0 };
}

/// The identity of the socket `fd` refers to now, or [`SocketId::NONE`] if
/// it cannot be told.
pub(crate) fn socket_id(fd: BorrowedFd<'_>) -> SocketId {
    match rustix::fs::fstat(fd) {
        // The field types differ across platforms.
        #[allow(clippy::unnecessary_cast)]
        Ok(stat) => SocketId {
            dev: stat.st_dev as u64,
            ino: stat.st_ino as u64,
        },
        Err(_) => SocketId::NONE,
    }
}

/// A duplicate of the socket that fd number `raw` names now, if it is still
/// the socket `id` was taken from; `None` if the number is closed or names
/// another socket.
///
/// For acting on a socket known only by number (the connection registry):
/// the owner may have closed it, and the number may name someone else's
/// socket since. The duplicate is ours, so the check and whatever follows see
/// one and the same socket, even if the number changes hands meanwhile.
#[allow(unsafe_code)]
pub(crate) fn dup_if_same(raw: RawFd, id: SocketId) -> Option<OwnedFd> {
    if id == SocketId::NONE {
        return None;
    }
    // SAFETY: the borrow lives for one fcntl(F_DUPFD_CLOEXEC), which neither
    // changes nor closes what the number refers to. A closed number fails
    // with EBADF; an open one is duplicated, and the identity check below
    // drops the duplicate unless it is the socket `id` names.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    let dup = fcntl_dupfd_cloexec(fd, 0).ok()?;
    (socket_id(dup.as_fd()) == id).then_some(dup)
}
