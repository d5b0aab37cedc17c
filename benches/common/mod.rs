//! Helpers shared by the benches (each bench includes the parts it needs).
#![allow(dead_code)]

use std::time::Duration;

/// Nanoseconds on `CLOCK_MONOTONIC`: one clock for every process on the
/// machine, so a timestamp taken in a helper process compares with ours.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Raises the soft fd limit to the hard one; panics unless `needed` fds fit.
pub fn raise_fd_limit(needed: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, raised).expect("raise the fd limit");
    let current = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    assert!(
        current > needed as u64 + 100,
        "need an fd limit above {needed}, have {current}"
    );
}

/// The median of `values` (the upper one of an even count).
pub fn median<T: Copy + PartialOrd>(values: &[T]) -> T {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[v.len() / 2]
}

pub fn min<T: Copy + PartialOrd>(values: &[T]) -> T {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[0]
}

pub fn max<T: Copy + PartialOrd>(values: &[T]) -> T {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[v.len() - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
