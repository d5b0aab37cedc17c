//! Starting a child process without stalling the caller.
//!
//! [`spawn`] hands a prepared [`Image`] to a short-lived thread of its own
//! and returns at once with a [`Spawn`] handle; the caller (an executor
//! thread) never waits for the child's `exec`. The handle tells, without
//! blocking, the child's pid as soon as it exists, and how the spawn ended:
//! [`Exec`].
//!
//! # How
//!
//! **Linux.** The thread creates the child with
//! `clone(CLONE_VM | CLONE_VFORK | CLONE_PARENT_SETTID)`, as glibc's and
//! musl's `posix_spawn` and Go's `forkExec` do: the child runs in the
//! parent's memory, on a small stack of its own, until it execs, so no page
//! table is copied whatever the size of the heap. `CLONE_VFORK` suspends
//! the calling thread until the child execs or exits, which is why that
//! thread is not the caller's. `CLONE_PARENT_SETTID` makes the kernel write
//! the child's pid where [`Spawn::pid`] reads it, before the child runs, so
//! a child stuck before exec (stopped, say) can be killed. The child reports
//! a failed exec through memory they share.
//!
//! **Other unixes.** The thread forks: the page tables are copied, but on
//! that thread, not the caller's. The child reports through a
//! close-on-exec pipe: nothing read means it died before exec, a mark means
//! it reached exec, the mark and an errno that exec failed.
//!
//! **In the child**, before exec: place the passed fds at 3, 4, ...; mark
//! every other fd from there on close-on-exec; write its own pid into the
//! `LISTEN_PID` slot prepared in the environment; give every caught signal
//! its default action back; set the start-up signal mask. The thread that
//! clones blocks every signal for its whole life (it starts that way), so
//! no handler of the parent can run in the child before the reset; signals
//! sent meanwhile wait, and the start-up ones stay blocked across exec.
//!
//! # Cancelling
//!
//! [`Spawn::cancel`] sets a flag, then kills the child if its pid is known.
//! Whoever publishes the pid checks the flag *after* publishing it: on
//! Linux the child itself, as its first act (the kernel writes the pid
//! before the child runs); elsewhere the thread, right after `fork`. With
//! both sides in that order (sequentially consistent), either the canceller
//! sees the pid and kills the child, or the child (or thread) sees the flag
//! and ends it. No child is ever left running unnoticed.
//!
//! # Windows that remain
//!
//! - Between clone and exec the child holds the parent's open fds (a copy
//!   of the table, all close-on-exec but the passed ones), like any
//!   fork/exec.
//! - A child stopped before exec keeps the spawning thread (not the
//!   caller) waiting, until it is killed at the caller's ready timeout.
//!
//! # Safety
//!
//! `clone`, `fork`, `_exit` come from libc: rustix has no stable API for
//! them. The child runs only [`Image::exec_in_child`]: async-signal-safe
//! calls, no allocation, no lock, no panic path; on Linux it shares the
//! parent's memory and touches only the [`Image`] (which the suspended
//! thread owns and no one else uses) and atomics.
#![allow(unsafe_code)]

use std::ffi::{c_char, CString, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use event_listener::Event;
use rustix::process::Pid;

use super::signal::{self, SigSet};
use super::{dup_at_least, process};
use crate::shutdown::lock;

/// The first fd number given to a passed fd; 0, 1 and 2 are stdio.
const FIRST_PASSED_FD: RawFd = 3;
/// Room for any `u32` pid.
const PID_DIGITS: usize = 10;
/// The spawning thread's stack. It runs little (and, on other unixes, the
/// forked child runs on a copy of it).
const THREAD_STACK: usize = 256 * 1024;

/// The program to execute.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Program<'a> {
    /// The file at this path when the child execs (not searched in `PATH`).
    Path(&'a Path),
    /// This open file, whatever is at its path now (see
    /// [`process::fexecve`]).
    Open(BorrowedFd<'a>),
}

enum ProgramImage {
    Path(CString),
    /// Numbered above the passed fds, so placing them cannot clobber it.
    Open(OwnedFd),
}

/// Everything the child needs to exec, built before the child exists, so
/// the child only writes digits and makes syscalls.
pub(crate) struct Image {
    program: ProgramImage,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _env: Vec<CString>,
    /// `NAME=` and room for the digits, NUL-terminated, for each variable
    /// that names the child's own pid. Never resized, so pointers into them
    /// stay valid.
    _pid_slots: Vec<Vec<u8>>,
    envp_ptrs: Vec<*const c_char>,
    /// Points at the first digit in each of `_pid_slots`.
    pid_digits: Vec<*mut u8>,
    /// Copies of the passed fds, numbered above their targets (3, 4, ...),
    /// so placing one never clobbers another.
    fds: Vec<OwnedFd>,
    startup_mask: SigSet,
    stop_before_exec: bool,
}

// SAFETY: the raw pointers point into heap buffers owned by this same value
// (moving it does not move them). They are only dereferenced in the child,
// while the thread that owns the value is suspended (Linux) or in a copy of
// the memory (fork).
unsafe impl Send for Image {}

impl Image {
    /// Prepares `program` with `argv` (`argv[0]` included), the environment
    /// entries `env` (`KEY=VALUE`), one entry `NAME=<the child's pid>` for
    /// each of `pid_vars`, and `fds`, to be placed at 3, 4, ... in order.
    ///
    /// `stop_before_exec` is a test hook: the child stops itself (SIGSTOP)
    /// right after it starts, before anything else.
    ///
    /// # Errors
    ///
    /// A NUL byte in a string (`InvalidInput`), or duplicating an fd failed.
    pub(crate) fn new(
        program: Program<'_>,
        argv: &[OsString],
        env: Vec<Vec<u8>>,
        pid_vars: &[&str],
        fds: &[BorrowedFd<'_>],
        stop_before_exec: bool,
    ) -> io::Result<Image> {
        let cstring = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| {
                let shown = String::from_utf8_lossy(bytes);
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NUL byte in {shown:?}"),
                )
            })
        };
        let first_free = FIRST_PASSED_FD + fds.len() as RawFd;
        let program = match program {
            Program::Path(path) => ProgramImage::Path(cstring(path.as_os_str().as_bytes())?),
            Program::Open(fd) => ProgramImage::Open(dup_at_least(fd, first_free)?),
        };
        let fds = fds
            .iter()
            .map(|fd| dup_at_least(fd, first_free))
            .collect::<io::Result<Vec<OwnedFd>>>()?;
        let argv = argv
            .iter()
            .map(|arg| cstring(arg.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let env = env
            .iter()
            .map(|entry| cstring(entry))
            .collect::<io::Result<Vec<_>>>()?;
        // "LISTEN_PID=0000000000\0": the child overwrites the digits.
        let mut pid_slots: Vec<Vec<u8>> = pid_vars
            .iter()
            .map(|name| {
                let mut slot = [name.as_bytes(), b"="].concat();
                slot.resize(name.len() + 1 + PID_DIGITS + 1, b'0');
                slot[name.len() + 1 + PID_DIGITS] = 0;
                slot
            })
            .collect();
        let pid_digits = pid_slots
            .iter_mut()
            .zip(pid_vars)
            // SAFETY: `NAME=` is shorter than its slot.
            .map(|(slot, name)| unsafe { slot.as_mut_ptr().add(name.len() + 1) })
            .collect();
        let pointers = |strings: &[CString]| {
            let mut ptrs: Vec<_> = strings.iter().map(|s| s.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            ptrs
        };
        let mut envp_ptrs = pointers(&env);
        envp_ptrs.pop();
        envp_ptrs.extend(pid_slots.iter().map(|slot| slot.as_ptr() as *const c_char));
        envp_ptrs.push(std::ptr::null());
        Ok(Image {
            program,
            argv_ptrs: pointers(&argv),
            _argv: argv,
            envp_ptrs,
            _env: env,
            _pid_slots: pid_slots,
            pid_digits,
            fds,
            startup_mask: SigSet::startup(),
            stop_before_exec,
        })
    }

    fn first_free(&self) -> RawFd {
        FIRST_PASSED_FD + self.fds.len() as RawFd
    }

    /// Runs in the child, between clone (or fork) and exec. Returns only on
    /// failure. `before_exec` runs right before the exec call.
    ///
    /// Async-signal-safe and allocation-free: raw syscalls, and `io::Error`s
    /// built from an errno (which allocate nothing).
    fn exec_in_child(&self, before_exec: &dyn Fn()) -> io::Error {
        let pid = rustix::process::getpid();
        if self.stop_before_exec {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::STOP);
        }
        self.write_pid(pid.as_raw_nonzero().get().unsigned_abs());
        signal::reset_caught_signals();
        for (target, fd) in (FIRST_PASSED_FD..).zip(&self.fds) {
            if let Err(e) = process::dup_onto(fd.as_fd(), target) {
                return e;
            }
        }
        // SAFETY: the child has a single thread and a fd table of its own
        // (no CLONE_FILES): nothing else closes or reuses these numbers.
        unsafe { process::cloexec_from(self.first_free()) };
        if let Err(e) = signal::set_thread_mask(&self.startup_mask) {
            return e;
        }
        before_exec();
        let (argv, envp) = (self.argv_ptrs.as_ptr(), self.envp_ptrs.as_ptr());
        match &self.program {
            // SAFETY: both arrays are null-terminated and point into
            // CStrings owned by `self`, alive for the call.
            ProgramImage::Path(path) => unsafe { process::execve(path, argv, envp) },
            // SAFETY: as above.
            ProgramImage::Open(fd) => unsafe { process::fexecve(fd.as_fd(), argv, envp) },
        }
    }

    /// Writes `pid` in decimal into each pid slot, NUL-terminated.
    fn write_pid(&self, pid: u32) {
        let mut digits = [0u8; PID_DIGITS];
        let mut n = pid;
        let mut start = PID_DIGITS;
        while start > 0 {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let len = PID_DIGITS - start;
        for &slot in &self.pid_digits {
            // SAFETY: each slot has PID_DIGITS digit bytes and a NUL after
            // them; we write at most PID_DIGITS bytes plus one NUL inside
            // that range. Only the child writes it, while nothing else reads
            // it.
            unsafe {
                std::ptr::copy_nonoverlapping(digits[start..].as_ptr(), slot, len);
                *slot.add(len) = 0;
            }
        }
    }
}

/// How a spawn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exec {
    /// The child runs the new program.
    Done,
    /// `exec` failed with this errno; the child exits with status 127.
    Failed(i32),
    /// The child died before it reached `exec` (a signal, or cancelled).
    DiedBefore,
    /// There is no child: creating it failed with this errno, or (`None`)
    /// the spawn was cancelled first.
    NotStarted(Option<i32>),
}

impl Exec {
    /// Whether a child was created (and so must be reaped).
    pub(crate) fn created(self) -> bool {
        !matches!(self, Exec::NotStarted(_))
    }
}

#[derive(Default)]
struct Shared {
    /// The child's pid once it exists, 0 before.
    pid: AtomicI32,
    cancelled: AtomicBool,
    finish: Mutex<Finish>,
    finished: Event,
}

#[derive(Default)]
struct Finish {
    outcome: Option<Exec>,
    /// The handle is gone: the thread kills and reaps the child itself.
    abandoned: bool,
}

impl Shared {
    fn pid(&self) -> Option<Pid> {
        Pid::from_raw(self.pid.load(Ordering::SeqCst))
    }
}

/// A spawn in progress, or finished. See the module docs.
pub(crate) struct Spawn {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Spawn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawn")
            .field("pid", &self.pid())
            .field("outcome", &self.outcome())
            .finish()
    }
}

/// Starts `image` on a thread of its own and returns at once.
///
/// # Errors
///
/// The thread could not be started, or the signal mask not changed.
pub(crate) fn spawn(image: Image) -> io::Result<Spawn> {
    let shared = Arc::new(Shared::default());
    let theirs = shared.clone();
    // The thread inherits this mask: it starts with every signal blocked,
    // so no handler ever runs on it, nor in its child before exec.
    let old = signal::block_all()?;
    let started = std::thread::Builder::new()
        .name("seamless-spawn".into())
        .stack_size(THREAD_STACK)
        .spawn(move || run(&theirs, image));
    let restored = signal::set_thread_mask(&old);
    started?;
    restored?;
    Ok(Spawn { shared })
}

/// The spawning thread.
fn run(shared: &Shared, image: Image) {
    let outcome = if shared.cancelled.load(Ordering::SeqCst) {
        Exec::NotStarted(None)
    } else {
        start_child(shared, &image)
    };
    // Our copies of the passed fds: the child has its own now.
    drop(image);
    let mut finish = lock(&shared.finish);
    if finish.abandoned {
        drop(finish);
        if let (true, Some(pid)) = (outcome.created(), shared.pid()) {
            let _ = process::kill(pid);
            let _ = process::wait_blocking(pid);
        }
        return;
    }
    finish.outcome = Some(outcome);
    drop(finish);
    shared.finished.notify(usize::MAX);
}

impl Spawn {
    /// The child's pid, as soon as it exists (before it execs).
    pub(crate) fn pid(&self) -> Option<Pid> {
        self.shared.pid()
    }

    /// How the spawn ended, if it has.
    pub(crate) fn outcome(&self) -> Option<Exec> {
        lock(&self.shared.finish).outcome
    }

    /// Waits, without blocking the thread, until the child has exec'd or
    /// failed to. Any executor will do: this only awaits an `Event`.
    pub(crate) async fn finished(&self) -> Exec {
        loop {
            if let Some(outcome) = self.outcome() {
                return outcome;
            }
            let listener = self.shared.finished.listen();
            if let Some(outcome) = self.outcome() {
                return outcome;
            }
            listener.await;
        }
    }

    /// Ends the spawn: a child not created yet never runs, one that exists
    /// is killed (SIGKILL), whether or not it has exec'd. It still has to be
    /// reaped: await [`finished`](Spawn::finished), then reap it.
    pub(crate) fn cancel(&self) {
        self.shared.cancelled.store(true, Ordering::SeqCst);
        if let Some(pid) = self.pid() {
            let _ = process::kill(pid);
        }
    }

    /// Cancels, and gives up the child. If the spawn has not finished, the
    /// spawning thread reaps the child when it does, and this returns
    /// `None`; otherwise the child (if any) is the caller's to reap.
    pub(crate) fn abandon(&self) -> Option<Pid> {
        self.cancel();
        let mut finish = lock(&self.shared.finish);
        match finish.outcome {
            Some(outcome) => outcome.created().then(|| self.pid()).flatten(),
            None => {
                finish.abandoned = true;
                None
            }
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
use vfork::start_child;

#[cfg(not(any(target_os = "linux", target_os = "android")))]
use fork::start_child;

/// `clone(CLONE_VM | CLONE_VFORK)`: no copy of the address space.
#[cfg(any(target_os = "linux", target_os = "android"))]
mod vfork {
    use std::ffi::c_void;

    use super::*;

    /// The child's stack: its own mapping, with a guard page below it.
    const STACK_SIZE: usize = 128 * 1024;

    /// What the child reads and reports, on the spawning thread's stack.
    struct Child<'a> {
        image: &'a Image,
        cancelled: &'a AtomicBool,
        reached_exec: AtomicBool,
        errno: AtomicI32,
    }

    pub(super) fn start_child(shared: &Shared, image: &Image) -> Exec {
        let stack = match Stack::new() {
            Ok(stack) => stack,
            Err(e) => return Exec::NotStarted(Some(errno(&e))),
        };
        let child = Child {
            image,
            cancelled: &shared.cancelled,
            reached_exec: AtomicBool::new(false),
            errno: AtomicI32::new(0),
        };
        let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT_SETTID | libc::SIGCHLD;
        // SAFETY: `child_main` only runs `Image::exec_in_child` (see the
        // module docs) on its own stack, which stays mapped until `clone`
        // returns; `child` lives on this thread's stack, and this thread is
        // suspended (CLONE_VFORK) until the child has exec'd or exited, so
        // it outlives every use. The kernel writes the child's pid to
        // `shared.pid` (CLONE_PARENT_SETTID), a live i32.
        let pid = unsafe {
            libc::clone(
                child_main,
                stack.top(),
                flags,
                &child as *const Child<'_> as *mut c_void,
                shared.pid.as_ptr(),
            )
        };
        if pid < 0 {
            return Exec::NotStarted(Some(errno(&io::Error::last_os_error())));
        }
        // The child has exec'd or exited: what it reported is final.
        shared.pid.store(pid, Ordering::SeqCst);
        match child.errno.load(Ordering::SeqCst) {
            0 if child.reached_exec.load(Ordering::SeqCst) => Exec::Done,
            0 => Exec::DiedBefore,
            errno => Exec::Failed(errno),
        }
    }

    extern "C" fn child_main(arg: *mut c_void) -> libc::c_int {
        // SAFETY: `arg` is the `Child` of `start_child`, alive while we run.
        let child = unsafe { &*(arg as *const Child<'_>) };
        // After the kernel published our pid: see "Cancelling".
        if !child.cancelled.load(Ordering::SeqCst) {
            let error = child
                .image
                .exec_in_child(&|| child.reached_exec.store(true, Ordering::SeqCst));
            let errno = error.raw_os_error().unwrap_or(libc::EINVAL);
            child.errno.store(errno, Ordering::SeqCst);
        }
        // SAFETY: ends the child process, running nothing of the parent's.
        unsafe { libc::_exit(127) }
    }

    struct Stack {
        base: *mut c_void,
        len: usize,
    }

    impl Stack {
        fn new() -> io::Result<Stack> {
            let guard = rustix::param::page_size();
            let len = STACK_SIZE + guard;
            // SAFETY: a fresh anonymous mapping, owned by the `Stack`.
            let base = unsafe {
                rustix::mm::mmap_anonymous(
                    std::ptr::null_mut(),
                    len,
                    rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                    rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::STACK,
                )?
            };
            let stack = Stack { base, len };
            // SAFETY: the lowest page of our own mapping: an overflow faults
            // instead of writing below it.
            unsafe { rustix::mm::mprotect(base, guard, rustix::mm::MprotectFlags::empty())? };
            Ok(stack)
        }

        /// The initial stack pointer: the stack grows down from the end.
        fn top(&self) -> *mut c_void {
            // SAFETY: one past the end of the mapping, page-aligned.
            unsafe { self.base.cast::<u8>().add(self.len).cast() }
        }
    }

    impl Drop for Stack {
        fn drop(&mut self) {
            // SAFETY: our own mapping; the child no longer runs on it (it
            // has exec'd or exited when `clone` returns).
            let _ = unsafe { rustix::mm::munmap(self.base, self.len) };
        }
    }
}

/// `fork`: the page tables are copied (on the spawning thread).
#[cfg(any(test, not(any(target_os = "linux", target_os = "android"))))]
mod fork {
    use super::*;

    /// Written by the child right before exec.
    const REACHED_EXEC: u8 = b'x';

    pub(super) fn start_child(shared: &Shared, image: &Image) -> Exec {
        // Above the passed fds, so placing them cannot clobber it.
        let pipe = crate::sys::pipe_cloexec()
            .and_then(|(read, write)| Ok((read, dup_at_least(write, image.first_free())?)));
        let (read, write) = match pipe {
            Ok(pipe) => pipe,
            Err(e) => return Exec::NotStarted(Some(errno(&e))),
        };
        // SAFETY: the child only runs `Image::exec_in_child` and writes to
        // the pipe (see the module docs), then `_exit`s.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Exec::NotStarted(Some(errno(&io::Error::last_os_error())));
        }
        if pid == 0 {
            let error = image.exec_in_child(&|| {
                let _ = rustix::io::write(&write, &[REACHED_EXEC]);
            });
            let errno = error.raw_os_error().unwrap_or(libc::EINVAL);
            let _ = rustix::io::write(&write, &errno.to_ne_bytes());
            // SAFETY: ends the child without running anything of the
            // parent's (no destructor, no atexit handler).
            unsafe { libc::_exit(127) }
        }
        drop(write);
        // Publish, then check: see "Cancelling".
        shared.pid.store(pid, Ordering::SeqCst);
        if shared.cancelled.load(Ordering::SeqCst) {
            let _ = Pid::from_raw(pid).map(process::kill);
        }
        let mut report = [0u8; 5];
        let mut got = 0;
        while got < report.len() {
            match rustix::io::read(&read, &mut report[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break,
            }
        }
        match got {
            0 => Exec::DiedBefore,
            5 => Exec::Failed(i32::from_ne_bytes([
                report[1], report[2], report[3], report[4],
            ])),
            _ => Exec::Done,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn run(argv: &[&str], program: &str) -> (Exec, Option<std::process::ExitStatus>) {
            let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
            let image = Image::new(
                Program::Path(Path::new(program)),
                &argv,
                vec![],
                &[],
                &[],
                false,
            )
            .unwrap();
            let shared = Shared::default();
            let outcome = start_child(&shared, &image);
            let status = shared.pid().map(|pid| process::wait_blocking(pid).unwrap());
            (outcome, status)
        }

        #[test]
        fn the_fork_fallback_execs_and_reports_failures() {
            let (outcome, status) = run(&["sh", "-c", "exit 3"], "/bin/sh");
            assert_eq!(outcome, Exec::Done);
            assert_eq!(status.unwrap().code(), Some(3));

            let (outcome, status) = run(&["nope"], "/nonexistent/program");
            assert_eq!(outcome, Exec::Failed(libc::ENOENT));
            assert_eq!(status.unwrap().code(), Some(127));
        }
    }
}

fn errno(error: &io::Error) -> i32 {
    error.raw_os_error().unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_digits() {
        let image = Image::new(
            Program::Path(Path::new("/bin/true")),
            &[],
            vec![b"A=b".to_vec()],
            &["LISTEN_PID", "WATCHDOG_PID"],
            &[],
            false,
        )
        .unwrap();
        // What the child's exec gets: every entry, up to the null pointer.
        let environment = |image: &Image| -> Vec<String> {
            image
                .envp_ptrs
                .iter()
                .take_while(|ptr| !ptr.is_null())
                .map(|&ptr| {
                    // SAFETY: each pointer is to a NUL-terminated string
                    // owned by `image`.
                    let entry = unsafe { std::ffi::CStr::from_ptr(ptr) };
                    entry.to_string_lossy().into()
                })
                .collect()
        };
        for pid in [1, 42, 4_194_304, u32::MAX] {
            image.write_pid(pid);
            assert_eq!(
                environment(&image),
                [
                    "A=b".into(),
                    format!("LISTEN_PID={pid}"),
                    format!("WATCHDOG_PID={pid}")
                ]
            );
        }
    }

    #[test]
    fn passed_fds_sit_above_their_targets() {
        let (read, write) = crate::sys::pipe_cloexec().unwrap();
        let image = Image::new(
            Program::Open(read.as_fd()),
            &[],
            vec![],
            &[],
            &[read.as_fd(), write.as_fd()],
            false,
        )
        .unwrap();
        use std::os::fd::AsRawFd;
        assert!(image.fds.iter().all(|fd| fd.as_raw_fd() >= 5));
        let ProgramImage::Open(program) = &image.program else {
            panic!("an open program");
        };
        assert!(program.as_raw_fd() >= 5);
    }
}
