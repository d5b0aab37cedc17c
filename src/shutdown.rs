//! The shutdown coordinator: phases, triggers, deadline and guards.
//!
//! A [`Shutdown`] moves through three phases, only ever forward:
//!
//! ```text
//! Running ──graceful(timeout)──▶ Draining { deadline } ──guards gone / deadline──▶ Stopped
//!    └──────────────────────────immediate()────────────────────────────────────────▲
//! ```
//!
//! The drain timeout is set once, on the coordinator
//! ([`Builder::drain_timeout`]); signal handling and hot restart read it from
//! there. [`Shutdown::graceful`] takes an explicit one for direct calls.
//!
//! This module knows nothing of sockets. It wakes tasks through
//! `event-listener` and measures the deadline with [`async_io::Timer`]; it never
//! spawns a task. **Time is enforced only while someone awaits
//! [`Shutdown::stopped`]** (usually `main`): the deadline, and the end of a
//! [pre-drain delay](Builder::pre_drain_delay).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
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
    /// Background work of the hook's own (the live handoff's channels),
    /// driven by whoever awaits [`Shutdown::stopped`]: the one future every
    /// application awaits. Registers `cx` for when there is more.
    fn poll_work(&self, _cx: &mut Context<'_>) {}
}

/// Why the coordinator left [`Phase::Running`]: set by the first trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Asked to stop (a signal, a call): this is the service's end, so what
    /// outlives the process (a Unix socket's file) is cleaned up.
    Stop,
    /// The next generation took over and serves on the same sockets.
    Upgrade,
}

/// How a [`Shutdown`] is set up. Made by [`Shutdown::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    drain_timeout: Duration,
    pre_drain_delay: Duration,
}

impl Builder {
    /// The deadline of a drain started by a signal or by a hot restart
    /// (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long to keep serving, and accepting, after a graceful trigger
    /// before draining starts (default zero: drain at once).
    ///
    /// For load balancers and Kubernetes endpoints that go on sending new
    /// connections for a while after the service was told to stop. The drain
    /// deadline counts from the end of the delay. A hot restart never waits
    /// for it: the next generation accepts at once.
    pub fn pre_drain_delay(mut self, delay: Duration) -> Self {
        self.pre_drain_delay = delay;
        self
    }

    /// The coordinator, in [`Phase::Running`].
    pub fn build(self) -> Shutdown {
        Shutdown {
            inner: Arc::new(Inner {
                phase: AtomicU8::new(RUNNING),
                guards: AtomicUsize::new(0),
                state: Mutex::new(State::default()),
                changed: Event::new(),
                hooks: Mutex::new(Vec::new()),
                hooks_ran: AtomicBool::new(false),
                drain_timeout: self.drain_timeout,
                pre_drain_delay: self.pre_drain_delay,
            }),
        }
    }
}

struct Inner {
    phase: AtomicU8,
    guards: AtomicUsize,
    /// Only touched by triggers and by timers, never per request.
    state: Mutex<State>,
    /// Notified on every phase change and every deadline change.
    changed: Event,
    hooks: Mutex<Vec<Weak<dyn PhaseHook>>>,
    /// The `on_stopped` hooks have run: [`Shutdown::stopped`] returns only
    /// then, whichever thread reached Stopped and ran them.
    hooks_ran: AtomicBool,
    drain_timeout: Duration,
    pre_drain_delay: Duration,
}

#[derive(Default)]
struct State {
    deadline: Option<Instant>,
    /// A graceful trigger waiting out the pre-drain delay: drain from
    /// `.0` with deadline `.1`.
    delayed: Option<(Instant, Instant)>,
    reason: Option<Reason>,
    /// A graceful or immediate trigger came, whatever the reason: after a
    /// handover too, where it ends this process only.
    stop_asked: bool,
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

impl Default for Builder {
    fn default() -> Self {
        Builder {
            drain_timeout: Duration::from_secs(30),
            pre_drain_delay: Duration::ZERO,
        }
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
    /// A coordinator in [`Phase::Running`], with the default settings (see
    /// [`Builder`]).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Settings for a coordinator: the drain timeout, a pre-drain delay.
    ///
    /// ```
    /// use std::time::Duration;
    /// use seamless::Shutdown;
    ///
    /// let shutdown = Shutdown::builder()
    ///     .drain_timeout(Duration::from_secs(10))
    ///     .build();
    /// assert_eq!(shutdown.drain_timeout(), Duration::from_secs(10));
    /// ```
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The deadline a drain started by a signal or a hot restart gets.
    pub fn drain_timeout(&self) -> Duration {
        self.inner.drain_timeout
    }

    /// Why the coordinator left [`Phase::Running`], once it has (or once a
    /// graceful trigger is waiting out the pre-drain delay).
    pub fn reason(&self) -> Option<Reason> {
        lock(&self.inner.state).reason
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
        lock(&self.inner.state).deadline
    }

    /// Starts a graceful shutdown that must end within `timeout` (signals use
    /// the coordinator's [`drain_timeout`](Shutdown::drain_timeout)).
    ///
    /// If draining has already started, this may only bring the deadline
    /// closer; it never pushes it back. With a
    /// [pre-drain delay](Builder::pre_drain_delay), draining starts once the
    /// delay is over, and the deadline counts from then. Returns the deadline
    /// now in force, or `None` if the coordinator has already stopped.
    pub fn graceful(&self, timeout: Duration) -> Option<Instant> {
        let now = Instant::now();
        let delay = self.inner.pre_drain_delay;
        {
            let mut state = lock(&self.inner.state);
            if self.is_stopped() {
                return None;
            }
            state.reason.get_or_insert(Reason::Stop);
            state.stop_asked = true;
            if !delay.is_zero() && !self.is_draining() {
                // Keep serving until the delay is over; `stopped()` and
                // `draining()` start the drain then.
                let (_, deadline) = state
                    .delayed
                    .get_or_insert((now + delay, now + delay + timeout));
                *deadline = (*deadline).min(now + delay + timeout);
                let deadline = *deadline;
                drop(state);
                tracing::info!(
                    ?delay,
                    "graceful shutdown: draining after the pre-drain delay"
                );
                self.inner.changed.notify(usize::MAX);
                return Some(deadline);
            }
        }
        Some(self.drain_until(now + timeout))
    }

    /// Decides for a handover to a successor that is ready: the reason
    /// becomes [`Reason::Upgrade`], unless a stop was asked for first
    /// (`false`, nothing done). Checked and decided under one lock, so that
    /// a stop and a handover never both win; a stop asked for afterwards
    /// ends this process only. [`hand_over`](Self::hand_over) then starts
    /// the drain.
    pub(crate) fn claim_handover(&self) -> bool {
        let mut state = lock(&self.inner.state);
        if self.is_stopped() || state.reason == Some(Reason::Stop) {
            return false;
        }
        state.reason = Some(Reason::Upgrade);
        true
    }

    /// Starts draining for a successor that is ready and serving: no
    /// pre-drain delay, the coordinator's drain timeout. `None`, and nothing
    /// done, if a stop was asked for first, or this process has stopped.
    pub(crate) fn hand_over(&self) -> Option<Instant> {
        {
            let mut state = lock(&self.inner.state);
            if self.is_stopped() || state.reason == Some(Reason::Stop) {
                return None;
            }
            state.reason = Some(Reason::Upgrade);
        }
        Some(self.drain_until(Instant::now() + self.inner.drain_timeout))
    }

    /// Running or Draining → Draining with a deadline no later than `wanted`.
    fn drain_until(&self, wanted: Instant) -> Instant {
        let deadline = {
            let mut state = lock(&self.inner.state);
            state.delayed = None;
            let shortened = state.deadline.map_or(wanted, |current| current.min(wanted));
            state.deadline = Some(shortened);
            shortened
        };
        let started = self
            .inner
            .phase
            .compare_exchange(RUNNING, DRAINING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if started {
            let reason = self.reason();
            let timeout = deadline.saturating_duration_since(Instant::now());
            tracing::info!(?reason, ?timeout, guards = self.guards(), "draining");
            self.run_hooks(|hook| hook.on_draining());
        }
        self.inner.changed.notify(usize::MAX);
        if self.guards() == 0 {
            self.stop();
        }
        deadline
    }

    /// A pre-drain delay that is over starts the drain; otherwise returns
    /// when it will be.
    fn delayed_drain(&self) -> Option<Instant> {
        let (start, deadline) = lock(&self.inner.state).delayed?;
        if Instant::now() < start {
            return Some(start);
        }
        self.drain_until(deadline);
        None
    }

    /// Stops at once: everything still held is told to stop now.
    pub fn immediate(&self) {
        {
            let mut state = lock(&self.inner.state);
            state.deadline = Some(Instant::now());
            state.delayed = None;
            state.reason.get_or_insert(Reason::Stop);
            state.stop_asked = true;
        }
        let previous = self.inner.phase.swap(STOPPED, Ordering::SeqCst);
        if previous == STOPPED {
            self.inner.changed.notify(usize::MAX);
            return;
        }
        tracing::info!(guards = self.guards(), "stopping now");
        let _ran = HooksRan(&self.inner);
        if previous == RUNNING {
            self.run_hooks(|hook| hook.on_draining());
        }
        self.run_hooks(|hook| hook.on_stopped());
    }

    /// Waits until draining starts (returns at once if it already has).
    ///
    /// While awaited, it also ends a [pre-drain delay](Builder::pre_drain_delay)
    /// on time.
    pub async fn draining(&self) {
        loop {
            let listener = self.inner.changed.listen();
            if self.is_draining() {
                return;
            }
            match self.delayed_drain() {
                Some(start) => future_or_timer(listener, start).await,
                None if self.is_draining() => return,
                None => listener.await,
            }
        }
    }

    /// Waits until the coordinator is [`Phase::Stopped`] and the library's
    /// own clean-up for it has run (a Unix socket file removed, the live
    /// handoff's channels closed), whichever thread reached `Stopped`: a
    /// process may exit as soon as it returns.
    ///
    /// This is also what enforces time: while it is awaited, it moves the
    /// coordinator to `Stopped` once every guard is gone or the deadline
    /// passes, whichever comes first, and ends a
    /// [pre-drain delay](Builder::pre_drain_delay) on time. Always await it.
    pub async fn stopped(&self) {
        loop {
            let listener = self.inner.changed.listen();
            match self.phase() {
                // Once the hooks have run (the thread that reached Stopped
                // notifies when they have).
                Phase::Stopped if self.inner.hooks_ran.load(Ordering::SeqCst) => return,
                Phase::Stopped => listener.await,
                Phase::Running => match self.delayed_drain() {
                    Some(start) => self.working_until(listener, Some(start)).await,
                    None if self.is_draining() => {}
                    None => self.working_until(listener, None).await,
                },
                Phase::Draining { deadline } => {
                    if self.guards() == 0 || Instant::now() >= deadline {
                        if self.guards() > 0 {
                            tracing::warn!(guards = self.guards(), "drain deadline passed");
                        }
                        self.stop();
                        continue;
                    }
                    self.working_until(listener, Some(deadline)).await;
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
    pub(crate) fn guards(&self) -> usize {
        self.inner.guards.load(Ordering::SeqCst)
    }

    /// Whether `other` is a handle to this same coordinator.
    pub(crate) fn same(&self, other: &Shutdown) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Whether a graceful or immediate trigger came (before or after a
    /// handover).
    pub(crate) fn stop_asked(&self) -> bool {
        lock(&self.inner.state).stop_asked
    }

    /// Waits until this process is asked to stop (a graceful or immediate
    /// trigger), even while a pre-drain delay holds off the drain. A
    /// handover never ends this wait.
    pub(crate) async fn stop_requested(&self) {
        loop {
            let listener = self.inner.changed.listen();
            if self.stop_asked() {
                return;
            }
            listener.await;
        }
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

    /// Draining → Stopped, exactly once.
    fn stop(&self) {
        let stopped = self
            .inner
            .phase
            .compare_exchange(DRAINING, STOPPED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if stopped {
            tracing::info!("stopped");
            let _ran = HooksRan(&self.inner);
            self.run_hooks(|hook| hook.on_stopped());
        }
    }

    fn run_hooks(&self, mut run: impl FnMut(&dyn PhaseHook)) {
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

/// Marks the `on_stopped` hooks as run and wakes [`Shutdown::stopped`]
/// when dropped: after the hooks, or while unwinding from one that
/// panicked, so that `stopped()` never waits forever.
struct HooksRan<'a>(&'a Inner);

impl Drop for HooksRan<'_> {
    fn drop(&mut self) {
        self.0.hooks_ran.store(true, Ordering::SeqCst);
        self.0.changed.notify(usize::MAX);
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

impl Shutdown {
    /// Waits for `listener` or until `at`, whichever comes first, driving
    /// the hooks' background work meanwhile.
    async fn working_until(&self, listener: EventListener, at: Option<Instant>) {
        let mut listener = std::pin::pin!(listener);
        let mut timer = at.map(Timer::at);
        std::future::poll_fn(|cx| {
            self.run_hooks(|hook| hook.poll_work(cx));
            if listener.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            match &mut timer {
                Some(timer) => std::pin::Pin::new(timer).poll(cx).map(drop),
                None => Poll::Pending,
            }
        })
        .await
    }
}

/// Waits for `listener` or until `at`, whichever comes first.
async fn future_or_timer(listener: EventListener, at: Instant) {
    futures_lite::future::or(listener, async {
        Timer::at(at).await;
    })
    .await
}

/// Locks a mutex, ignoring poisoning: the data behind ours stays consistent
/// even if a holder panicked.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stop asked for first wins over a handover that comes after it,
    /// whether the drain has started or waits out a pre-drain delay.
    #[test]
    fn a_stop_asked_for_first_wins_over_a_handover() {
        let delayed = Shutdown::builder()
            .pre_drain_delay(Duration::from_secs(60))
            .build();
        for shutdown in [Shutdown::new(), delayed] {
            let _guard = shutdown.guard();
            shutdown.graceful(Duration::from_secs(60));
            assert!(!shutdown.claim_handover());
            assert_eq!(shutdown.hand_over(), None);
            assert_eq!(shutdown.reason(), Some(Reason::Stop));
        }
        // Claimed first: a stop asked for afterwards does not change why
        // this process drains.
        let shutdown = Shutdown::new();
        let _guard = shutdown.guard();
        assert!(shutdown.claim_handover());
        shutdown.graceful(Duration::from_secs(60));
        assert_eq!(shutdown.reason(), Some(Reason::Upgrade));
        assert!(shutdown.hand_over().is_some());
        assert_eq!(shutdown.reason(), Some(Reason::Upgrade));
        assert!(shutdown.is_draining());
    }

    /// A hook that waits in `on_stopped` until it is let go.
    struct HeldHook {
        entered: std::sync::mpsc::SyncSender<()>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl PhaseHook for HeldHook {
        fn on_draining(&self) {}
        fn on_stopped(&self) {
            self.entered.send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
        }
    }

    /// `stopped()` returns only once the hooks have run, whichever thread
    /// reached Stopped: a process that exits as soon as it returns must
    /// not cut a hook short (the removal of a Unix socket file, say).
    #[test]
    fn stopped_waits_for_the_hooks_run_on_another_thread() {
        let shutdown = Shutdown::new();
        let (entered_tx, entered) = std::sync::mpsc::sync_channel(1);
        let (release, release_rx) = std::sync::mpsc::channel();
        let hook: Arc<dyn PhaseHook> = Arc::new(HeldHook {
            entered: entered_tx,
            release: Mutex::new(release_rx),
        });
        shutdown.add_hook(Arc::downgrade(&hook));
        let guard = shutdown.guard();
        shutdown.graceful(Duration::from_secs(60));
        // The last guard drops on another thread, which runs the hooks.
        let stopping = std::thread::spawn(move || drop(guard));
        entered.recv().unwrap();
        assert!(shutdown.is_stopped());
        let early =
            futures_lite::future::block_on(futures_lite::future::poll_once(shutdown.stopped()));
        assert!(early.is_none(), "stopped() returned while a hook still ran");
        release.send(()).unwrap();
        stopping.join().unwrap();
        futures_lite::future::block_on(shutdown.stopped());
    }

    struct PanickingHook;

    impl PhaseHook for PanickingHook {
        fn on_draining(&self) {}
        fn on_stopped(&self) {
            panic!("a hook that fails");
        }
    }

    /// A hook that panics on the thread that reached Stopped does not leave
    /// `stopped()` waiting forever elsewhere.
    #[test]
    fn stopped_returns_after_a_hook_panicked() {
        let shutdown = Shutdown::new();
        let hook: Arc<dyn PhaseHook> = Arc::new(PanickingHook);
        shutdown.add_hook(Arc::downgrade(&hook));
        let guard = shutdown.guard();
        shutdown.graceful(Duration::from_secs(60));
        let dropping = std::thread::spawn(move || drop(guard));
        assert!(dropping.join().is_err(), "the hook panicked");
        let waited = futures_lite::future::block_on(futures_lite::future::or(
            async {
                shutdown.stopped().await;
                true
            },
            async {
                async_io::Timer::after(Duration::from_secs(30)).await;
                false
            },
        ));
        assert!(waited, "stopped() still waits");
    }
}
