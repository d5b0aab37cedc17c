//! Process-level syscalls for the handoff: placing fds, marking the rest
//! close-on-exec, the start-up signal mask, and `execve`.
//!
//! # Safety
//!
//! Most of these run in a forked child before `exec`, where only
//! async-signal-safe calls are allowed: none of them allocates or takes a
//! lock. rustix covers the fd calls; `execve` and `pthread_sigmask` come from
//! libc, because rustix has no stable API for them.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr};
use std::io;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::fs::{open, Mode, OFlags, RawDir};
use rustix::io::{dup2, fcntl_getfd, fcntl_setfd, FdFlags};

/// Signals whose default action would kill a new generation before it has
/// installed its handlers. A child starts with them blocked; they are
/// delivered once it unblocks them.
const STARTUP_SIGNALS: [libc::c_int; 5] = [
    libc::SIGHUP,
    libc::SIGUSR2,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
];

/// Blocks or unblocks the start-up signals for the calling thread (and the
/// threads it starts later). Async-signal-safe.
pub(crate) fn block_startup_signals(block: bool) -> io::Result<()> {
    let how = if block {
        libc::SIG_BLOCK
    } else {
        libc::SIG_UNBLOCK
    };
    // SAFETY: `set` is initialised by `sigemptyset` before use and lives on
    // the stack for the duration of the calls; a null old-set pointer is
    // allowed.
    let rc = unsafe {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        for signal in STARTUP_SIGNALS {
            libc::sigaddset(set.as_mut_ptr(), signal);
        }
        libc::pthread_sigmask(how, set.as_ptr(), std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Makes `target` refer to what `fd` refers to, without `FD_CLOEXEC`.
pub(crate) fn dup_onto(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: the `OwnedFd` only names the target number for dup2(2), which
    // accepts a number that is not open (and atomically replaces one that
    // is). `ManuallyDrop` makes sure this handle never closes it.
    let mut target = ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(target) });
    dup2(fd, &mut target)?;
    Ok(())
}

/// Marks every open fd numbered `first` or above close-on-exec, so nothing
/// but the fds placed below `first` reaches the next program — including
/// fds a careless library opened without `O_CLOEXEC`.
///
/// # Safety
///
/// Only call this in a single-threaded process (a forked child): it acts on
/// fd numbers it lists, which another thread could close and reuse.
pub(crate) unsafe fn cloexec_from(first: RawFd) {
    // Listing /proc/self/fd is exact and allocation-free; without /proc, try
    // every number up to the fd limit.
    if cloexec_listed(first).is_err() {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(1 << 16)
            .min(1 << 20) as RawFd;
        for fd in first..limit {
            // SAFETY: per this function's contract nothing closes fds
            // concurrently; a number that is not open fails with EBADF.
            set_cloexec_raw(unsafe { BorrowedFd::borrow_raw(fd) });
        }
    }
}

fn cloexec_listed(first: RawFd) -> io::Result<()> {
    let dir = open(
        c"/proc/self/fd",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut buf = [MaybeUninit::<u8>::uninit(); 1024];
    let mut entries = RawDir::new(&dir, &mut buf);
    while let Some(entry) = entries.next() {
        let Some(fd) = parse_fd(entry?.file_name()) else {
            continue; // "." and ".."
        };
        if fd >= first {
            // SAFETY: the fd is listed as open, and the caller guarantees no
            // other thread closes it. Our own `dir` is close-on-exec anyway.
            set_cloexec_raw(unsafe { BorrowedFd::borrow_raw(fd) });
        }
    }
    Ok(())
}

fn set_cloexec_raw(fd: BorrowedFd<'_>) {
    if let Ok(flags) = fcntl_getfd(fd) {
        let _ = fcntl_setfd(fd, flags | FdFlags::CLOEXEC);
    }
}

/// Parses a decimal fd number without allocating.
fn parse_fd(name: &CStr) -> Option<RawFd> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes.len() > 9 {
        return None;
    }
    bytes.iter().try_fold(0, |n: RawFd, &b| {
        b.is_ascii_digit().then(|| n * 10 + RawFd::from(b - b'0'))
    })
}

/// Replaces the process image. Returns only on failure.
///
/// # Safety
///
/// `argv` and `envp` must be null-terminated arrays of pointers to
/// NUL-terminated strings, all valid until this call returns.
pub(crate) unsafe fn execve(
    program: &CStr,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> io::Error {
    // SAFETY: forwarded from this function's contract.
    unsafe { libc::execve(program.as_ptr(), argv, envp) };
    io::Error::last_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fd_names() {
        assert_eq!(parse_fd(c"17"), Some(17));
        assert_eq!(parse_fd(c"."), None);
        assert_eq!(parse_fd(c".."), None);
        assert_eq!(parse_fd(c""), None);
        assert_eq!(parse_fd(c"9999999999"), None);
    }
}
