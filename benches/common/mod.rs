//! Helpers shared by the benches (each bench includes the parts it needs).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
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

/// The `http` example binary next to this bench's profile directory,
/// built (or found up to date) by cargo.
pub fn http_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<bench>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("bench binary in target/<profile>/deps");
    // `cargo bench` builds with the `bench` profile (release settings) into
    // target/release: the same profile keeps both builds up to date.
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some("release") => "bench".to_owned(),
        Some(other) => other.to_owned(),
    };
    let mut build = Command::new(env!("CARGO"));
    build
        .args([
            "build",
            "--quiet",
            "--example",
            "http",
            "--profile",
            &profile,
        ])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
    if let Some(target_dir) = profile_dir.parent() {
        build.arg("--target-dir").arg(target_dir);
    }
    // What cargo set for running this bench, not for building: build
    // scripts (ring's) rerun when these change, and the next `cargo bench`
    // would rebuild them back.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let per_package = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix));
        if per_package
            || matches!(
                &*name,
                "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
            )
        {
            build.env_remove(&*name);
        }
    }
    let status = build.status().expect("run cargo build");
    assert!(
        status.success(),
        "building the http example failed: {status}"
    );
    profile_dir.join("examples").join("http")
}

/// What a client helper saw when the server ended its idle connections:
/// the latest EOF (`CLOCK_MONOTONIC` ns), how many EOFs, and how many
/// reads that were anything else (bytes after the answer, a reset).
#[derive(Debug, Default)]
pub struct EofTally {
    last_eof: std::cell::Cell<u64>,
    eofs: std::cell::Cell<u64>,
    errors: std::cell::Cell<u64>,
}

impl EofTally {
    /// Waits for the server to end `conn`, and counts how it did.
    pub async fn watch(&self, conn: &mut async_io::Async<std::net::TcpStream>) {
        use futures_lite::AsyncReadExt;
        match conn.read(&mut [0u8; 1]).await {
            Ok(0) => {
                self.last_eof.set(self.last_eof.get().max(monotonic_ns()));
                self.eofs.set(self.eofs.get() + 1);
            }
            _ => self.errors.set(self.errors.get() + 1),
        }
    }

    /// The line the helper writes: `eof LAST EOFS ERRORS`.
    pub fn report(&self) -> String {
        let (last, eofs, errors) = (self.last_eof.get(), self.eofs.get(), self.errors.get());
        format!("eof {last} {eofs} {errors}")
    }

    /// Reads `LAST EOFS ERRORS` (a report without its word), checks that
    /// each of `n` connections saw a clean EOF, and returns the last EOF.
    pub fn check(report: &str, n: usize) -> u64 {
        let fields: Vec<u64> = report
            .split_whitespace()
            .map(|f| f.parse().expect("a number"))
            .collect();
        let [last_eof, eofs, errors] = fields[..] else {
            panic!("bad report from the client helper: {report:?}");
        };
        assert_eq!(
            (eofs, errors),
            (n as u64, 0),
            "every connection must see a clean EOF"
        );
        last_eof
    }
}
