//! Signal masks and dispositions around a spawn.
//!
//! The spawning thread blocks every signal ([`block_all`]), so nothing can
//! run a handler in the child between clone and exec, where the child still
//! has the parent's handlers (and, with `CLONE_VM`, its memory). The child
//! then resets every caught signal to its default action
//! ([`reset_caught_signals`]), sets the start-up mask (the
//! [`STARTUP_SIGNALS`] blocked, so one arriving before the new generation
//! has its handlers is held back) and execs.
//!
//! # Safety
//!
//! `sigaction` and `pthread_sigmask` come from libc: rustix has no stable
//! API for signal dispositions or masks. Everything called in a child
//! before exec is async-signal-safe and allocates nothing.
#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;

use libc::c_int;

/// Signals whose default action would kill a new generation before it has
/// installed its handlers. A new generation starts with them blocked.
pub(crate) const STARTUP_SIGNALS: [c_int; 5] = [
    libc::SIGHUP,
    libc::SIGUSR2,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
];

/// A set of signals, as masks take them.
#[derive(Clone, Copy)]
pub(crate) struct SigSet(libc::sigset_t);

impl SigSet {
    /// No signal.
    pub(crate) fn empty() -> SigSet {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: `sigemptyset` initialises the whole set.
        unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            SigSet(set.assume_init())
        }
    }

    /// Every signal.
    pub(crate) fn full() -> SigSet {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: `sigfillset` initialises the whole set.
        unsafe {
            libc::sigfillset(set.as_mut_ptr());
            SigSet(set.assume_init())
        }
    }

    /// The [`STARTUP_SIGNALS`].
    pub(crate) fn startup() -> SigSet {
        let mut set = SigSet::empty();
        for signal in STARTUP_SIGNALS {
            // SAFETY: the set is initialised; the signal number is valid.
            unsafe { libc::sigaddset(&mut set.0, signal) };
        }
        set
    }

    #[cfg(test)]
    fn contains(&self, signal: c_int) -> bool {
        // SAFETY: the set is initialised. Async-signal-safe (pure).
        unsafe { libc::sigismember(&self.0, signal) == 1 }
    }
}

/// Replaces the calling thread's mask with `mask`; returns the old one.
/// Async-signal-safe.
pub(crate) fn set_thread_mask(mask: &SigSet) -> io::Result<SigSet> {
    thread_mask(libc::SIG_SETMASK, Some(mask))
}

/// Blocks every signal on the calling thread (and the threads it starts
/// from now on); returns the old mask.
pub(crate) fn block_all() -> io::Result<SigSet> {
    set_thread_mask(&SigSet::full())
}

/// Unblocks the [`STARTUP_SIGNALS`] on the calling thread.
pub(crate) fn unblock_startup_signals() -> io::Result<()> {
    thread_mask(libc::SIG_UNBLOCK, Some(&SigSet::startup())).map(drop)
}

/// `pthread_sigmask`: changes (or with `None` only reads) the calling
/// thread's mask and returns the old one. It returns its error instead of
/// setting `errno`, so it is safe in a signal handler.
fn thread_mask(how: c_int, set: Option<&SigSet>) -> io::Result<SigSet> {
    let mut old = SigSet::empty();
    let set = set.map_or(std::ptr::null(), |set| &set.0 as *const _);
    // SAFETY: `set` is null or points to an initialised set; `old` is an
    // initialised set the call overwrites.
    let rc = unsafe { libc::pthread_sigmask(how, set, &mut old.0) };
    if rc == 0 {
        Ok(old)
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// In a child between clone and exec: gives every signal that has a
/// handler its default action back, and SIGPIPE too (the Rust runtime
/// ignores it; a program we start should begin as if started by a shell, as
/// `std::process::Command` does). Other ignored signals stay ignored, as
/// with `posix_spawn`. Async-signal-safe, allocation-free.
///
/// Only for the child: in any other process it would undo the handlers.
pub(crate) fn reset_caught_signals() {
    // 64 covers Linux's real-time signals; numbers a platform lacks fail
    // with EINVAL and are skipped.
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        let Some(handler) = handler_of(signal) else {
            continue;
        };
        let ignored = handler == libc::SIG_IGN && signal != libc::SIGPIPE;
        if handler != libc::SIG_DFL && !ignored {
            set_handler(signal, libc::SIG_DFL, 0);
        }
    }
}

/// The current handler of `signal` (`SIG_DFL`, `SIG_IGN` or a function's
/// address), or `None` if the number is not a signal here.
fn handler_of(signal: c_int) -> Option<libc::sighandler_t> {
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null new action only reads; `old` is written by the call.
    let rc = unsafe { libc::sigaction(signal, std::ptr::null(), old.as_mut_ptr()) };
    // SAFETY: zeroed is a valid `sigaction`, and the call filled it on success.
    (rc == 0).then(|| unsafe { old.assume_init() }.sa_sigaction)
}

/// Installs `handler` for `signal` with `flags` and an empty handler mask.
fn set_handler(signal: c_int, handler: libc::sighandler_t, flags: c_int) -> bool {
    // SAFETY: zeroed is a valid `sigaction`; we set the fields we use.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    action.sa_flags = flags;
    // SAFETY: `action.sa_mask` is an initialised field of `action`.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: `action` is initialised; a null old action is allowed.
    unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_set() {
        let set = SigSet::startup();
        for signal in STARTUP_SIGNALS {
            assert!(set.contains(signal));
        }
        assert!(!set.contains(libc::SIGUSR1));
        assert!(!SigSet::empty().contains(libc::SIGTERM));
        assert!(SigSet::full().contains(libc::SIGTERM));
    }

    #[test]
    fn thread_masks_are_set_and_restored() {
        // A thread of our own, so the test harness's threads are untouched.
        std::thread::spawn(|| {
            let old = block_all().unwrap();
            let now = thread_mask(libc::SIG_BLOCK, None).unwrap();
            assert!(now.contains(libc::SIGTERM) && now.contains(libc::SIGUSR1));
            set_thread_mask(&old).unwrap();
            let back = thread_mask(libc::SIG_BLOCK, None).unwrap();
            assert_eq!(back.contains(libc::SIGTERM), old.contains(libc::SIGTERM));
        })
        .join()
        .unwrap();
    }
}
