//! Process-level syscalls for the handoff: placing fds and marking the rest
//! close-on-exec in a child before exec, `execve`/`fexecve`, and, in the
//! parent, signalling and reaping a child without blocking.
//!
//! # Safety
//!
//! The fd functions run in a child between clone and exec, where only
//! async-signal-safe calls are allowed: none of them allocates or takes a
//! lock. rustix covers the fd calls and `waitpid`; `execve`, `fexecve` and
//! `close_range` come from libc, because rustix has no stable API for them.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use rustix::fs::{open, Mode, OFlags};
use rustix::io::{fcntl_getfd, fcntl_setfd, FdFlags};
use rustix::process::{Pid, Signal, WaitOptions};

/// Makes `target` refer to what `fd` refers to, without `FD_CLOEXEC`.
/// Through libc: rustix's `dup2` wants the target as an `OwnedFd`, which a
/// number that is not open cannot be.
pub(crate) fn dup_onto(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2(2) takes any two numbers; `fd` is open for the call (it
    // is borrowed), and `target` is closed first if open, atomically.
    // Async-signal-safe, and it allocates nothing.
    match unsafe { libc::dup2(fd.as_raw_fd(), target) } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
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
    // One syscall where the kernel has it (Linux 5.11); else listing
    // /proc/self/fd, exact and allocation-free; without /proc, every number
    // up to the fd limit.
    if cloexec_range(first) {
        return;
    }
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

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`, through libc's `syscall`
/// because neither rustix nor every libc wraps it. `false` if the kernel
/// lacks it.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn cloexec_range(first: RawFd) -> bool {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    let Ok(first) = libc::c_uint::try_from(first) else {
        return false;
    };
    // SAFETY: a plain syscall on fd numbers; it reads no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        ) == 0
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn cloexec_range(_first: RawFd) -> bool {
    false
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn cloexec_listed(first: RawFd) -> io::Result<()> {
    use rustix::fs::RawDir;
    use std::mem::MaybeUninit;
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

/// Without `/proc/self/fd` (or rustix's `RawDir`), the caller tries every
/// number.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn cloexec_listed(_first: RawFd) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

fn set_cloexec_raw(fd: BorrowedFd<'_>) {
    if let Ok(flags) = fcntl_getfd(fd) {
        let _ = fcntl_setfd(fd, flags | FdFlags::CLOEXEC);
    }
}

/// Parses a decimal fd number without allocating.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn parse_fd(name: &CStr) -> Option<RawFd> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes.len() > 9 {
        return None;
    }
    bytes.iter().try_fold(0, |n: RawFd, &b| {
        b.is_ascii_digit().then(|| n * 10 + RawFd::from(b - b'0'))
    })
}

/// Replaces the process image with the program at `program`. Returns only
/// on failure.
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

/// Replaces the process image with the program open at `program`, whatever
/// is at its path now. Returns only on failure.
///
/// Linux: `execveat(fd, "", ..., AT_EMPTY_PATH)` (glibc and musl fall back
/// to `/proc/self/fd/N` on kernels before 3.19); works on an `O_PATH` fd.
/// FreeBSD, NetBSD, illumos: `fexecve(2)`. macOS has no way to execute an
/// open file: `Unsupported`.
///
/// A script (`#!`) run this way needs its fd open across the exec, for the
/// interpreter to read it: ours are close-on-exec, so only binaries work.
///
/// # Safety
///
/// As for [`execve`].
pub(crate) unsafe fn fexecve(
    program: BorrowedFd<'_>,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> io::Error {
    use std::os::fd::AsRawFd;
    #[cfg(not(target_vendor = "apple"))]
    {
        // SAFETY: forwarded from this function's contract.
        unsafe { libc::fexecve(program.as_raw_fd(), argv, envp) };
        io::Error::last_os_error()
    }
    #[cfg(target_vendor = "apple")]
    {
        let _ = (program.as_raw_fd(), argv, envp);
        io::Error::from(io::ErrorKind::Unsupported)
    }
}

/// Opens an executable to run later with [`fexecve`], so that replacing or
/// deleting the file at `path` afterwards does not matter. Close-on-exec.
///
/// Linux: `O_PATH` (needs no read permission, only execute). Elsewhere:
/// read-only.
pub(crate) fn open_executable(path: &Path) -> io::Result<OwnedFd> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let mode = OFlags::PATH;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let mode = OFlags::RDONLY;
    Ok(open(path, mode | OFlags::CLOEXEC, Mode::empty())?)
}

/// Opens this process's own executable, as it was started: on Linux
/// through `/proc/self/exe`, which names the running file even after it was
/// replaced or deleted. Elsewhere through [`std::env::current_exe`], which
/// resolves a path, so open it early (at start-up), before a deploy can
/// replace the file.
pub(crate) fn open_current_exe() -> io::Result<OwnedFd> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return open_executable(Path::new("/proc/self/exe"));
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    return open_executable(&std::env::current_exe()?);
}

/// Sends SIGKILL to `pid`.
///
/// Only for a child of ours that we have not reaped: its pid cannot have
/// been reused. (Unless the application reaps children it does not own, or
/// ignores SIGCHLD; prefer [`kill_pidfd`] where there is a pidfd.)
pub(crate) fn kill(pid: Pid) -> io::Result<()> {
    signal(pid, Signal::KILL)
}

/// Sends `signal` to `pid`, with the same caveat as [`kill`].
pub(crate) fn signal(pid: Pid, signal: Signal) -> io::Result<()> {
    Ok(rustix::process::kill_process(pid, signal)?)
}

/// Sends SIGKILL through a pidfd: it always reaches the process it was
/// opened for.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn kill_pidfd(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    signal_pidfd(pidfd, Signal::KILL)
}

/// Sends `signal` through a pidfd.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn signal_pidfd(pidfd: BorrowedFd<'_>, signal: Signal) -> io::Result<()> {
    Ok(rustix::process::pidfd_send_signal(pidfd, signal)?)
}

/// A pidfd for a child of ours (Linux 5.3): readable once the child has
/// exited, so its exit can be awaited on a reactor. Close-on-exec.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Reaps `pid` if it has exited; `None` if it still runs. Never blocks.
pub(crate) fn try_wait(pid: Pid) -> io::Result<Option<ExitStatus>> {
    let reaped = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG)?;
    Ok(reaped.map(|(_, status)| ExitStatus::from_raw(status.as_raw())))
}

/// Waits for `pid` to exit and reaps it. Blocks: only for a thread of its
/// own.
pub(crate) fn wait_blocking(pid: Pid) -> io::Result<ExitStatus> {
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, status))) => return Ok(ExitStatus::from_raw(status.as_raw())),
            Ok(None) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn opens_its_own_executable() {
        let fd = open_current_exe().unwrap();
        let opened = rustix::fs::fstat(&fd).unwrap();
        let on_disk = std::fs::metadata(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(
            (opened.st_dev as u64, opened.st_ino as u64),
            (on_disk.dev(), on_disk.ino())
        );
        let flags = fcntl_getfd(&fd).unwrap();
        assert!(flags.contains(FdFlags::CLOEXEC));
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn parses_fd_names() {
        assert_eq!(parse_fd(c"17"), Some(17));
        assert_eq!(parse_fd(c"."), None);
        assert_eq!(parse_fd(c".."), None);
        assert_eq!(parse_fd(c""), None);
        assert_eq!(parse_fd(c"9999999999"), None);
    }
}
