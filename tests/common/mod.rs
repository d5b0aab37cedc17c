//! Helpers shared by the tracker's tests: bounded waits and counts.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use async_io::Timer;
use futures_lite::future;
use seamless::conn::Counts;
use seamless::Tracker;

/// Any single wait longer than this fails the test.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test if it takes longer than [`LIMIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    future::or(fut, async {
        Timer::after(LIMIT).await;
        panic!("timed out after {LIMIT:?}: {what}")
    })
    .await
}

pub fn counts(new: usize, busy: usize, idle: usize, closing: usize) -> Counts {
    Counts {
        total: new + busy + idle + closing,
        new,
        busy,
        idle,
        closing,
    }
}

/// Waits until the tracker's counts satisfy `done` (bounded by [`LIMIT`]).
pub async fn wait_counts(tracker: &Tracker, what: &str, done: impl Fn(&Counts) -> bool) -> Counts {
    let start = Instant::now();
    loop {
        let now = tracker.counts();
        if done(&now) {
            return now;
        }
        assert!(
            start.elapsed() < LIMIT,
            "timed out after {LIMIT:?} waiting for {what}; counts are {now:?}"
        );
        Timer::after(Duration::from_millis(2)).await;
    }
}

pub async fn wait_exact(tracker: &Tracker, expected: Counts) {
    wait_counts(tracker, &format!("{expected:?}"), |c| *c == expected).await;
}
