//! The coordinator on its own and with a real listener: the drain timeout
//! set in one place, the pre-drain delay, the reason for stopping, and a
//! signal mapping of one's own.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use seamless::{Phase, Reason, Shutdown, Tracker};

/// Any single wait longer than this fails the test.
const LIMIT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    future::or(fut, async {
        Timer::after(LIMIT).await;
        panic!("timed out after {LIMIT:?}: {what}")
    })
    .await
}

#[test]
fn drain_timeout_is_set_once_on_the_coordinator() {
    let shutdown = Shutdown::builder()
        .drain_timeout(Duration::from_secs(7))
        .build();
    assert_eq!(shutdown.drain_timeout(), Duration::from_secs(7));
    assert_eq!(Shutdown::new().drain_timeout(), Duration::from_secs(30));
    let _guard = shutdown.guard();
    let before = Instant::now();
    let deadline = shutdown.graceful(shutdown.drain_timeout()).unwrap();
    assert!(deadline >= before + Duration::from_secs(7));
    assert!(deadline <= Instant::now() + Duration::from_secs(7));
}

#[test]
fn reason_is_set_by_the_first_trigger() {
    let shutdown = Shutdown::new();
    assert_eq!(shutdown.reason(), None);
    let _guard = shutdown.guard();
    shutdown.graceful(Duration::from_secs(5));
    assert_eq!(shutdown.reason(), Some(Reason::Stop));
    shutdown.immediate();
    assert_eq!(shutdown.reason(), Some(Reason::Stop));
    assert_eq!(shutdown.phase(), Phase::Stopped);
}

/// During the pre-drain delay the service goes on accepting and serving;
/// draining starts once the delay is over, and not before.
#[test]
fn pre_drain_delay_keeps_accepting_then_drains() {
    const DELAY: Duration = Duration::from_millis(300);
    future::block_on(within("scenario", async {
        let shutdown = Shutdown::builder()
            .pre_drain_delay(DELAY)
            .drain_timeout(Duration::from_secs(10))
            .build();
        let tracker = Tracker::new(&shutdown);
        let mut listener = tracker.listen(Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap());
        let addr = listener.get_ref().unwrap().get_ref().local_addr().unwrap();

        let triggered = Instant::now();
        let deadline = shutdown.graceful(Duration::from_secs(10)).unwrap();
        assert!(deadline >= triggered + DELAY + Duration::from_secs(10));
        assert_eq!(
            shutdown.phase(),
            Phase::Running,
            "still serving during the delay"
        );
        assert_eq!(shutdown.reason(), Some(Reason::Stop));

        // A client that connects during the delay is accepted and served.
        let client = async {
            let mut stream = Async::<TcpStream>::connect(addr).await.unwrap();
            stream.write_all(b"x").await.unwrap();
            let mut reply = [0u8; 1];
            stream.read_exact(&mut reply).await.unwrap();
            reply
        };
        let server = async {
            let (mut conn, _) = listener
                .accept()
                .await
                .unwrap()
                .expect("accepted during the delay");
            let mut byte = [0u8; 1];
            conn.read_exact(&mut byte).await.unwrap();
            conn.write_all(&byte).await.unwrap();
            conn
        };
        let (reply, conn) = future::zip(client, server).await;
        assert_eq!(&reply, b"x");
        assert!(!shutdown.is_draining(), "the delay is not over yet");
        drop(conn);

        // Awaiting draining() ends the delay on time, and not before.
        shutdown.draining().await;
        assert!(triggered.elapsed() >= DELAY);
        assert!(
            listener.accept().await.unwrap().is_none(),
            "no accepting once draining"
        );
        shutdown.stopped().await;
    }));
}

/// `stopped()` alone (as in `main`) also ends the delay, then the drain.
#[test]
fn stopped_ends_the_pre_drain_delay() {
    const DELAY: Duration = Duration::from_millis(200);
    future::block_on(within("scenario", async {
        let shutdown = Shutdown::builder().pre_drain_delay(DELAY).build();
        let triggered = Instant::now();
        shutdown.graceful(Duration::from_secs(10));
        shutdown.stopped().await;
        assert!(triggered.elapsed() >= DELAY);
        assert_eq!(shutdown.phase(), Phase::Stopped);
    }));
}

/// An immediate stop during the delay does not wait for it.
#[test]
fn immediate_cuts_the_pre_drain_delay() {
    future::block_on(within("scenario", async {
        let shutdown = Shutdown::builder()
            .pre_drain_delay(Duration::from_secs(3600))
            .build();
        shutdown.graceful(Duration::from_secs(10));
        shutdown.immediate();
        shutdown.stopped().await;
        shutdown.draining().await;
        assert_eq!(shutdown.phase(), Phase::Stopped);
    }));
}

/// A mapping of one's own: SIGUSR1 drains, SIGWINCH stops at once. The
/// signals are real, sent to this process; the default mapping's signals
/// are not handled meanwhile (a SIGTERM here would end the test run).
#[cfg(feature = "signals")]
#[test]
fn a_custom_signal_map_acts_on_its_own_signals() {
    use rustix::process::{getpid, kill_process, Signal as Raw};
    use seamless::signals::{Action, Event, Signal, SignalHandler};

    future::block_on(async {
        let shutdown = Shutdown::new();
        let _guard = shutdown.guard();
        let mut signals = SignalHandler::with_map(
            &shutdown,
            [
                (Signal::Usr1, Action::Graceful),
                (Signal::Winch, Action::Immediate),
            ],
        )
        .expect("handlers installed");

        kill_process(getpid(), Raw::USR1).expect("SIGUSR1");
        let event = within("the SIGUSR1 event", signals.next()).await;
        assert!(
            matches!(
                event,
                Event::Graceful {
                    signal: Signal::Usr1
                }
            ),
            "{event:?}"
        );
        assert!(shutdown.is_draining());
        assert_eq!(shutdown.reason(), Some(Reason::Stop));

        kill_process(getpid(), Raw::WINCH).expect("SIGWINCH");
        let event = within("the SIGWINCH event", signals.next()).await;
        assert!(
            matches!(
                event,
                Event::Immediate {
                    signal: Signal::Winch
                }
            ),
            "{event:?}"
        );
        assert_eq!(shutdown.phase(), Phase::Stopped);
    });
}
