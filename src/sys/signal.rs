//! Signal masks and dispositions: around a spawn, and while a new generation
//! starts up.
//!
//! # Around a spawn
//!
//! The spawning thread blocks every signal ([`block_all`]), so nothing can
//! run a handler in the child between clone and exec, where the child still
//! has the parent's handlers (and, with `CLONE_VM`, its memory). The child
//! then resets every caught signal to its default action
//! ([`reset_caught_signals`]), sets the start-up mask and execs.
//!
//! # During start-up
//!
//! A new generation starts with the [`STARTUP_SIGNALS`] blocked, so that one
//! arriving before its handlers exist is held back instead of killing it.
//! A mask is per thread and inherited by every thread created later, so it
//! cannot stay until the generation is ready: a thread created meanwhile
//! (async-io's reactor thread, for one) would keep the signals blocked for
//! ever. So [`defer_startup_signals`], called first thing in `main` (from
//! `Upgrader::new`, before other threads exist), swaps the mask for a tiny
//! recording handler and unblocks at once. Later:
//!
//! - [`release_startup_signals`] hands each signal to whoever handles it
//!   now (`SignalHandler::new`, once its handlers are installed), raising a
//!   recorded one again so that it is acted on there, once;
//! - at `ready()` every signal is released; one that nobody took over gets
//!   back its default action first, so a recorded SIGTERM ends a generation
//!   that never installed a handler, no later than `ready()`.
//!
//! **Never twice.** async-signal's handler (signal-hook-registry) calls the
//! handler it replaced before its own actions, so the recorder is called
//! again for every later signal. It tells the two calls apart by the mask:
//! it is installed with `SA_NODEFER`, so when the kernel calls it the
//! signal is not blocked; when a handler installed over it calls it, that
//! handler's own delivery has blocked the signal. Only direct calls record.
//! (A handler installed over ours *with* `SA_NODEFER` that calls ours would
//! look direct; async-signal does not do that.)
//!
//! **The window left.** While signal-hook-registry installs its handler, a
//! signal arriving between its `sigaction` and its publishing the new
//! handler table is passed to the previous handler only (its documented
//! install race), and ours, seeing a chained call, leaves it to a handler
//! that does not get it: that one signal is lost. The window is a few
//! microseconds inside `SignalHandler::new`.
//!
//! # Safety
//!
//! `sigaction`, `pthread_sigmask` and `raise` come from libc: rustix has no
//! stable API for signal dispositions or masks. Everything called from the
//! recorder or in a child before exec is async-signal-safe and allocates
//! nothing. The recorder only touches atomics and saves/restores `errno`.
#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

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

// ------------------------------------------------------ start-up signals

/// Per start-up signal: who has it.
const NOT_DEFERRED: u8 = 0;
/// The recorder is installed; nothing has arrived.
const HELD: u8 = 1;
/// The recorder is installed; the signal arrived at least once (like a
/// blocked signal, arrivals coalesce).
const PENDING: u8 = 2;
/// Handed over; the recorder passes on what still reaches it.
const RELEASED: u8 = 3;

static STATE: [AtomicU8; STARTUP_SIGNALS.len()] =
    [const { AtomicU8::new(NOT_DEFERRED) }; STARTUP_SIGNALS.len()];

fn index(signal: c_int) -> Option<usize> {
    STARTUP_SIGNALS.iter().position(|&s| s == signal)
}

fn recorder_address() -> libc::sighandler_t {
    record as extern "C" fn(c_int) as libc::sighandler_t
}

/// Swaps the start-up mask for the recorder: each start-up signal that is
/// blocked on this thread and has its default action gets the recorder,
/// then the start-up signals are unblocked (one held back since exec is
/// recorded now). Doing nothing for a signal someone already handles or
/// ignores; calling it again does nothing.
///
/// Call it before any other thread exists: threads started earlier keep
/// the mask they inherited.
pub(crate) fn defer_startup_signals() -> io::Result<()> {
    let blocked = thread_mask(libc::SIG_BLOCK, None)?;
    for (i, &signal) in STARTUP_SIGNALS.iter().enumerate() {
        if !blocked.contains(signal)
            || STATE[i].load(Ordering::SeqCst) != NOT_DEFERRED
            || handler_of(signal) != Some(libc::SIG_DFL)
        {
            continue;
        }
        STATE[i].store(HELD, Ordering::SeqCst);
        let flags = libc::SA_NODEFER | libc::SA_RESTART;
        if !set_handler(signal, recorder_address(), flags) {
            STATE[i].store(NOT_DEFERRED, Ordering::SeqCst);
            return Err(io::Error::last_os_error());
        }
    }
    unblock_startup_signals()
}

/// Hands the given start-up signals over to whatever handles them now. If
/// the recorder is still installed for one (nobody took it over), it gets
/// its default action back first. A recorded signal is raised again, on
/// this thread, so it takes effect now, once. Signals that were never
/// deferred, or already released, are left alone.
pub(crate) fn release_startup_signals(signals: impl IntoIterator<Item = c_int>) {
    for signal in signals {
        let Some(i) = index(signal) else { continue };
        if matches!(STATE[i].load(Ordering::SeqCst), NOT_DEFERRED | RELEASED) {
            continue;
        }
        step_aside(signal);
        // From here the recorder passes on what reaches it; what it recorded
        // before is raised once, below.
        if STATE[i].swap(RELEASED, Ordering::SeqCst) == PENDING {
            // SAFETY: raising a valid signal number.
            unsafe { libc::raise(signal) };
        }
    }
}

/// Gives `signal` its default action back if the recorder is its handler,
/// so that raising it cannot come back to the recorder.
fn step_aside(signal: c_int) {
    if handler_of(signal) == Some(recorder_address()) {
        set_handler(signal, libc::SIG_DFL, 0);
    }
}

/// The recorder. Installed with `SA_NODEFER`; see the module docs.
extern "C" fn record(signal: c_int) {
    let errno = SavedErrno::save();
    let chained = thread_mask(libc::SIG_BLOCK, None).is_ok_and(|mask| mask.contains(signal));
    if let (false, Some(i)) = (chained, index(signal)) {
        loop {
            match STATE[i].load(Ordering::SeqCst) {
                HELD => {
                    let swapped = STATE[i].compare_exchange(
                        HELD,
                        PENDING,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                    if swapped.is_ok() {
                        break;
                    }
                }
                PENDING => break,
                // Released while this call was on its way here: the handler
                // now in place never saw this signal, so pass it on.
                _ => {
                    step_aside(signal);
                    // SAFETY: raising a valid signal number. It is not
                    // blocked (SA_NODEFER), so it is delivered to the new
                    // handler before `raise` returns.
                    unsafe { libc::raise(signal) };
                    break;
                }
            }
        }
    }
    errno.restore();
}

/// `errno`, saved on entry to a signal handler and restored on exit, so the
/// interrupted code never sees a value the handler's calls left.
struct SavedErrno(c_int);

impl SavedErrno {
    fn save() -> SavedErrno {
        SavedErrno(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }

    fn restore(self) {
        if let Some(location) = errno_location() {
            // SAFETY: the location of this thread's errno, valid for the
            // thread's life.
            unsafe { *location = self.0 };
        }
    }
}

fn errno_location() -> Option<*mut c_int> {
    // SAFETY: each returns the address of the calling thread's errno.
    #[cfg(any(target_os = "linux", target_os = "dragonfly", target_os = "redox"))]
    return Some(unsafe { libc::__errno_location() });
    // SAFETY: as above.
    #[cfg(any(target_os = "android", target_os = "netbsd", target_os = "openbsd"))]
    return Some(unsafe { libc::__errno() });
    // SAFETY: as above.
    #[cfg(any(target_vendor = "apple", target_os = "freebsd"))]
    return Some(unsafe { libc::__error() });
    // SAFETY: as above.
    #[cfg(any(target_os = "illumos", target_os = "solaris"))]
    return Some(unsafe { libc::___errno() });
    // Elsewhere errno is left as the handler's calls leave it; they only
    // change it when they fail.
    #[allow(unreachable_code)]
    None
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
