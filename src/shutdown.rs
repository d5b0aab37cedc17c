//! The shutdown coordinator: phases, triggers, deadline and guards.
//!
//! A [`Shutdown`] moves through three phases, only ever forward:
//!
//! ```text
//! Running ──graceful(timeout)──▶ Draining { deadline } ──guards gone / deadline──▶ Stopped
//!    └──────────────────────────immediate()────────────────────────────────────────▲
//! ```
//!
//! This module knows nothing of sockets. It wakes tasks through
//! `event-listener` and measures the deadline with [`async_io::Timer`]; it never
//! spawns a task. The deadline is enforced by whoever awaits
//! [`Shutdown::stopped`], usually `main`.

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_io::Timer;
use event_listener::{Event, EventListener};

/// Where a [`Shutdown`] is. Phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving normally.
    Running,
    /// No new work is accepted; work in flight finishes until `deadline`.
    Draining {
        /// When everything still held is told to stop.
        deadline: Instant,
    },
    /// Everything is told to stop now.
    Stopped,
}

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const STOPPED: u8 = 2;

/// Something lower layers (the connection tracker, the upgrader) want to run
/// synchronously at a phase change, in the context of whoever changed it.
pub(crate) trait PhaseHook: Send + Sync {
    /// Draining has just started.
    fn on_draining(&self);
    /// Stopped has just been reached: stop everything now.
    fn on_stopped(&self);
}

struct Inner {
    phase: AtomicU8,
    guards: AtomicUsize,
    /// Only touched by triggers and by deadline timers, never per request.
    deadline: Mutex<Option<Instant>>,
    /// Notified on every phase change and every deadline change.
    changed: Event,
    hooks: Mutex<Vec<Weak<dyn PhaseHook>>>,
}

/// A cheap, clonable handle to one shutdown coordinator.
///
/// All clones share the same phase. Cloning is an `Arc` clone; reading the
/// phase is one atomic load.
///
/// # Examples
///
/// Subscribe to the shutdown *before* you check whether it already happened:
/// [`draining`](Shutdown::draining) does both in the right order.
///
/// ```
/// use std::time::Duration;
/// use seamless::Shutdown;
///
/// # futures_lite::future::block_on(async {
/// let shutdown = Shutdown::new();
/// let guard = shutdown.guard(); // a task that must finish first
///
/// shutdown.graceful(Duration::from_secs(30));
/// shutdown.draining().await; // returns at once: draining has started
///
/// drop(guard); // the last guard is gone...
/// shutdown.stopped().await; // ...so Stopped is reached well before the deadline
/// # });
/// ```
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("phase", &self.phase())
            .field("guards", &self.guards())
            .finish()
    }
}

impl Shutdown {
    /// Creates a coordinator in the [`Phase::Running`] phase.
    pub fn new() -> Self {
        Shutdown {
            inner: Arc::new(Inner {
                phase: AtomicU8::new(RUNNING),
                guards: AtomicUsize::new(0),
                deadline: Mutex::new(None),
                changed: Event::new(),
                hooks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The current phase.
    ///
    /// A deadline that has passed but that nobody has acted on yet still
    /// reads as `Draining`; [`stopped`](Shutdown::stopped) is what acts on it.
    pub fn phase(&self) -> Phase {
        match self.inner.phase.load(Ordering::SeqCst) {
            RUNNING => Phase::Running,
            DRAINING => Phase::Draining {
                deadline: self.deadline().unwrap_or_else(Instant::now),
            },
            _ => Phase::Stopped,
        }
    }

    /// Whether draining has started (or the coordinator has already stopped).
    ///
    /// One atomic load: cheap enough for every read and write.
    pub fn is_draining(&self) -> bool {
        self.inner.phase.load(Ordering::SeqCst) != RUNNING
    }

    /// Whether the coordinator has stopped.
    pub fn is_stopped(&self) -> bool {
        self.inner.phase.load(Ordering::SeqCst) == STOPPED
    }

    /// The drain deadline, once draining has started.
    pub fn deadline(&self) -> Option<Instant> {
        *lock(&self.inner.deadline)
    }

    /// Starts a graceful shutdown that must end within `timeout`.
    ///
    /// If draining has already started, this may only bring the deadline
    /// closer; it never pushes it back. Returns the deadline now in force, or
    /// `None` if the coordinator has already stopped.
    pub fn graceful(&self, timeout: Duration) -> Option<Instant> {
        let wanted = Instant::now() + timeout;
        let deadline = {
            let mut deadline = lock(&self.inner.deadline);
            if self.is_stopped() {
                return None;
            }
            let shortened = deadline.map_or(wanted, |current| current.min(wanted));
            *deadline = Some(shortened);
            shortened
        };
        let started = self
            .inner
            .phase
            .compare_exchange(RUNNING, DRAINING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if started {
            self.run_hooks(|hook| hook.on_draining());
        }
        self.inner.changed.notify(usize::MAX);
        if self.guards() == 0 {
            self.stop();
        }
        Some(deadline)
    }

    /// Stops at once: everything still held is told to stop now.
    pub fn immediate(&self) {
        *lock(&self.inner.deadline) = Some(Instant::now());
        let previous = self.inner.phase.swap(STOPPED, Ordering::SeqCst);
        if previous == RUNNING {
            self.run_hooks(|hook| hook.on_draining());
        }
        if previous != STOPPED {
            self.run_hooks(|hook| hook.on_stopped());
        }
        self.inner.changed.notify(usize::MAX);
    }

    /// Waits until draining starts (returns at once if it already has).
    pub async fn draining(&self) {
        self.wait_until(|s| s.is_draining()).await
    }

    /// Waits until the coordinator is [`Phase::Stopped`].
    ///
    /// This is also what enforces the deadline: while it is awaited, it moves
    /// the coordinator to `Stopped` once every guard is gone or the deadline
    /// passes, whichever comes first.
    pub async fn stopped(&self) {
        loop {
            let listener = self.inner.changed.listen();
            match self.phase() {
                Phase::Stopped => return,
                Phase::Running => listener.await,
                Phase::Draining { deadline } => {
                    if self.guards() == 0 || Instant::now() >= deadline {
                        self.stop();
                        return;
                    }
                    futures_lite::future::or(listener, async {
                        Timer::at(deadline).await;
                    })
                    .await;
                }
            }
        }
    }

    /// Holds off [`Phase::Stopped`] until the returned guard is dropped (or the
    /// deadline passes).
    ///
    /// Take one for every task, connection or background job that must finish
    /// before the process exits. A guard taken after `Stopped` holds nothing.
    pub fn guard(&self) -> Guard {
        self.inner.guards.fetch_add(1, Ordering::SeqCst);
        Guard {
            shutdown: self.clone(),
        }
    }

    /// How many guards are alive.
    pub fn guards(&self) -> usize {
        self.inner.guards.load(Ordering::SeqCst)
    }

    /// Registers a hook run at phase changes. Hooks are held weakly.
    pub(crate) fn add_hook(&self, hook: Weak<dyn PhaseHook>) {
        let mut hooks = lock(&self.inner.hooks);
        hooks.retain(|h| h.strong_count() > 0);
        hooks.push(hook);
    }

    /// A listener woken at the next phase or deadline change. Subscribe, then
    /// check the phase again, then await it.
    pub(crate) fn changed(&self) -> EventListener {
        self.inner.changed.listen()
    }

    async fn wait_until(&self, done: impl Fn(&Self) -> bool) {
        loop {
            if done(self) {
                return;
            }
            let listener = self.inner.changed.listen();
            if done(self) {
                return;
            }
            listener.await;
        }
    }

    /// Draining → Stopped, exactly once.
    fn stop(&self) {
        let stopped = self
            .inner
            .phase
            .compare_exchange(DRAINING, STOPPED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if stopped {
            self.run_hooks(|hook| hook.on_stopped());
            self.inner.changed.notify(usize::MAX);
        }
    }

    fn run_hooks(&self, run: impl Fn(&dyn PhaseHook)) {
        // Upgrade under the lock, run outside it: a hook may take its own locks.
        let hooks: Vec<_> = lock(&self.inner.hooks)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for hook in hooks {
            run(&*hook);
        }
    }
}

/// Holds off [`Phase::Stopped`] while alive. See [`Shutdown::guard`].
#[must_use = "a guard holds off Stopped only while it is alive"]
pub struct Guard {
    shutdown: Shutdown,
}

impl Guard {
    /// The coordinator this guard belongs to, to await
    /// [`draining`](Shutdown::draining) or [`stopped`](Shutdown::stopped).
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard").finish_non_exhaustive()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let inner = &self.shutdown.inner;
        if inner.guards.fetch_sub(1, Ordering::SeqCst) == 1
            && inner.phase.load(Ordering::SeqCst) == DRAINING
        {
            self.shutdown.stop();
        }
    }
}

/// Locks a mutex, ignoring poisoning: the data behind ours stays consistent
/// even if a holder panicked.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
