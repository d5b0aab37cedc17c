//! OS signals mapped to shutdown and upgrade, on any runtime.
//!
//! | signal           | default action                                   |
//! |------------------|--------------------------------------------------|
//! | SIGTERM, SIGINT  | graceful shutdown; a second one makes it immediate |
//! | SIGHUP, SIGUSR2  | hot restart ([`Upgrader::upgrade`])              |
//! | SIGQUIT          | immediate shutdown                               |
//!
//! Built on `async-signal`. Nothing is spawned: drive
//! [`SignalHandler::next`] in a loop from a task of your own, and log the
//! [`Event`]s it returns. While an upgrade runs, other signals are still
//! handled: a SIGTERM during an upgrade starts the drain at once and aborts
//! the upgrade (the child is killed, or stopped too if it was ready:
//! [`Event::UpgradeFailed`] with [`UpgradeError::Aborted`]).
//!
//! A signal arriving while a new generation starts up, before its handlers
//! are installed, cannot kill it: it is held back (blocked until
//! [`Upgrader::new`], recorded after), and delivered once
//! [`SignalHandler::new`] has installed its handlers; one nobody handles
//! takes its default effect at [`Upgrader::ready`]. No thread is left with
//! these signals blocked.
//!
//! ```no_run
//! use std::time::Duration;
//! use seamless::signals::SignalHandler;
//! use seamless::Shutdown;
//!
//! # futures_lite::future::block_on(async {
//! let shutdown = Shutdown::builder().drain_timeout(Duration::from_secs(10)).build();
//! let mut signals = SignalHandler::new(&shutdown)?;
//! loop {
//!     let event = futures_lite::future::or(
//!         async { Some(signals.next().await) },
//!         async { shutdown.stopped().await; None },
//!     )
//!     .await;
//!     match event {
//!         Some(event) => eprintln!("{event}"),
//!         None => break,
//!     }
//! }
//! # std::io::Result::Ok(()) });
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;

pub use async_signal::Signal;
use futures_lite::StreamExt;

use crate::handoff::{UpgradeError, Upgrader};
use crate::shutdown::Shutdown;
use crate::sys;

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Drain within the coordinator's
    /// [`drain_timeout`](Shutdown::drain_timeout); a second such signal
    /// stops at once.
    Graceful,
    /// Stop at once.
    Immediate,
    /// Start the next generation.
    Upgrade,
}

/// The default mapping (see the module docs).
const DEFAULT_MAP: [(Signal, Action); 5] = [
    (Signal::Term, Action::Graceful),
    (Signal::Int, Action::Graceful),
    (Signal::Hup, Action::Upgrade),
    (Signal::Usr2, Action::Upgrade),
    (Signal::Quit, Action::Immediate),
];

/// What [`SignalHandler::next`] did.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A graceful shutdown started.
    Graceful {
        /// The signal that asked for it.
        signal: Signal,
    },
    /// An immediate stop.
    Immediate {
        /// The signal that asked for it.
        signal: Signal,
    },
    /// An upgrade started.
    UpgradeStarted {
        /// The signal that asked for it.
        signal: Signal,
    },
    /// The next generation is ready; this process is draining, and
    /// watches it for its probation time.
    Upgraded {
        /// The new generation's pid.
        pid: u32,
    },
    /// The new generation lived through its probation: the upgrade is over.
    ProbationPassed {
        /// The new generation's pid.
        pid: u32,
    },
    /// An upgrade failed or was refused; this process goes on serving.
    UpgradeFailed(UpgradeError),
    /// An upgrade signal arrived but no [`Upgrader`] is set.
    UpgradeIgnored {
        /// The signal.
        signal: Signal,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Graceful { signal } => write!(f, "{signal:?}: draining"),
            Event::Immediate { signal } => write!(f, "{signal:?}: stopping now"),
            Event::UpgradeStarted { signal } => {
                write!(f, "{signal:?}: starting the next generation")
            }
            Event::Upgraded { pid } => write!(f, "generation {pid} is ready; draining"),
            Event::ProbationPassed { pid } => write!(f, "generation {pid} passed its probation"),
            Event::UpgradeFailed(e) => write!(f, "upgrade failed: {e}"),
            Event::UpgradeIgnored { signal } => write!(f, "{signal:?}: no upgrader, ignored"),
        }
    }
}

type UpgradeFuture = Pin<Box<dyn Future<Output = Result<u32, UpgradeError>> + Send>>;

/// What woke [`SignalHandler::next`] during an upgrade.
enum Step {
    Done(Result<u32, UpgradeError>),
    Ready(u32),
    Signal(Option<io::Result<Signal>>),
}

/// Turns OS signals into shutdown and upgrade actions.
pub struct SignalHandler {
    signals: async_signal::Signals,
    map: Vec<(Signal, Action)>,
    shutdown: Shutdown,
    upgrader: Option<Upgrader>,
    graceful_seen: bool,
    upgrading: Option<UpgradeFuture>,
    /// The running upgrade's new generation was reported ready.
    announced: bool,
}

impl fmt::Debug for SignalHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalHandler")
            .field("map", &self.map)
            .field("upgrading", &self.upgrading.is_some())
            .finish_non_exhaustive()
    }
}

impl SignalHandler {
    /// Installs handlers for the default mapping (see the module docs).
    ///
    /// # Errors
    ///
    /// Installing a handler failed.
    pub fn new(shutdown: &Shutdown) -> io::Result<Self> {
        Self::with_map(shutdown, DEFAULT_MAP)
    }

    /// Installs handlers for the given mapping instead.
    ///
    /// # Errors
    ///
    /// Installing a handler failed.
    pub fn with_map(
        shutdown: &Shutdown,
        map: impl IntoIterator<Item = (Signal, Action)>,
    ) -> io::Result<Self> {
        let map: Vec<_> = map.into_iter().collect();
        let signals = async_signal::Signals::new(map.iter().map(|(signal, _)| *signal))?;
        // Handlers are in place: what start-up held back is delivered to
        // them now, once.
        sys::signal::release_startup_signals(map.iter().map(|(signal, _)| *signal as i32));
        sys::signal::unblock_startup_signals()?;
        Ok(SignalHandler {
            signals,
            map,
            shutdown: shutdown.clone(),
            upgrader: None,
            graceful_seen: false,
            upgrading: None,
            announced: false,
        })
    }

    /// Upgrade with this upgrader on [`Action::Upgrade`].
    pub fn upgrader(mut self, upgrader: Upgrader) -> Self {
        self.upgrader = Some(upgrader);
        self
    }

    /// Waits for the next signal (or the end of a running upgrade), acts on
    /// it, and says what it did.
    pub async fn next(&mut self) -> Event {
        loop {
            let signal = match self.upgrading.as_mut() {
                Some(upgrade) => {
                    let upgrade_done = async { Step::Done(upgrade.await) };
                    let signal = async { Step::Signal(self.signals.next().await) };
                    // The new generation's readiness comes before the end of
                    // its probation, from the same upgrade.
                    let ready = async {
                        match (&self.upgrader, self.announced) {
                            (Some(upgrader), false) => loop {
                                let changed = upgrader.ready_child_changed();
                                if let Some(pid) = upgrader.ready_child() {
                                    return Step::Ready(pid);
                                }
                                changed.await;
                            },
                            _ => futures_lite::future::pending().await,
                        }
                    };
                    // Signals first: a stop that arrived while the child got
                    // ready is acted on before the upgrade hands over, so it
                    // stops the child too rather than this process alone.
                    match futures_lite::future::or(
                        signal,
                        futures_lite::future::or(upgrade_done, ready),
                    )
                    .await
                    {
                        Step::Done(outcome) => {
                            self.upgrading = None;
                            return match (outcome, self.announced) {
                                (Ok(pid), true) => Event::ProbationPassed { pid },
                                (Ok(pid), false) => Event::Upgraded { pid },
                                (Err(e), _) => Event::UpgradeFailed(e),
                            };
                        }
                        Step::Ready(pid) => {
                            self.announced = true;
                            return Event::Upgraded { pid };
                        }
                        Step::Signal(signal) => signal,
                    }
                }
                None => self.signals.next().await,
            };
            // The stream only ends if the handler is gone; then nothing more
            // can arrive.
            let Some(Ok(signal)) = signal else {
                return futures_lite::future::pending().await;
            };
            if let Some(event) = self.act(signal) {
                return event;
            }
        }
    }

    fn act(&mut self, signal: Signal) -> Option<Event> {
        let action = self.map.iter().find(|(s, _)| *s == signal)?.1;
        Some(match action {
            Action::Graceful if !self.graceful_seen => {
                self.graceful_seen = true;
                self.shutdown.graceful(self.shutdown.drain_timeout());
                Event::Graceful { signal }
            }
            Action::Graceful | Action::Immediate => {
                self.shutdown.immediate();
                Event::Immediate { signal }
            }
            Action::Upgrade => {
                let Some(upgrader) = self.upgrader.clone() else {
                    return Some(Event::UpgradeIgnored { signal });
                };
                if self.upgrading.is_some() {
                    return Some(Event::UpgradeFailed(UpgradeError::InProgress));
                }
                self.upgrading = Some(Box::pin(async move { upgrader.upgrade().await }));
                self.announced = false;
                Event::UpgradeStarted { signal }
            }
        })
    }
}
