//! Processes seen from outside: signals, liveness, reaping and open fds,
//! through rustix and /proc (Linux). Shared by `examples/demo.rs` and
//! `tests/restart.rs`.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions};

/// How often [`poll`] looks.
pub const POLL: Duration = Duration::from_millis(5);

/// Polls `check` every [`POLL`] until it returns `Some`, for at most
/// `timeout`.
pub fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Makes this process the reaper of orphaned descendants, so generations
/// whose parent generation has exited can be reaped here (and are not left
/// as zombies of an init that does not reap).
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
            eprintln!("could not become a child subreaper ({e}); zombies of init are accepted");
        }
    });
}

pub fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(pid as i32).expect("a positive pid")
}

pub fn signal(pid: u32, signal: Signal) -> io::Result<()> {
    rustix::process::kill_process(pid_of(pid), signal).map_err(io::Error::from)
}

/// Whether `pid` still runs. Reaps it if it is our exited child; an exited
/// process that is somebody else's zombie does not run.
pub fn alive(pid: u32) -> bool {
    // ECHILD: not ours (or already reaped). Only this pid is waited for, so
    // children of other tests are left alone.
    let _ = rustix::process::waitpid(Some(pid_of(pid)), WaitOptions::NOHANG);
    if rustix::process::test_kill_process(pid_of(pid)).is_err() {
        return false; // ESRCH
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "pid (comm) S ppid ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim().chars().next());
    state != Some('Z') && state.is_some()
}

pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    poll(timeout, || (!alive(pid)).then_some(())).is_some()
}

/// The fds open in `pid`, as (number, what it points to).
pub fn fds(pid: &str) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            Some((
                e.file_name().into_string().ok()?,
                std::fs::read_link(e.path()).ok()?,
            ))
        })
        .collect()
}

/// How many fds `pid` has open: `(own, inherited)`, where `inherited` are
/// fds above stdio that this test process holds too, under the same number
/// and pointing to the same thing: leaked to the first generation by
/// whatever started the test (a shell, a jobserver), and rightly not passed
/// on by the library. Anonymous inodes (epoll, eventfd, timerfd) all read
/// alike, so they never count as inherited; pipes and sockets name their own
/// inode. (Reading our own fd list opens one more fd, which never matches.)
pub fn fd_count(pid: u32) -> (usize, usize) {
    let ours = fds("self");
    let theirs = fds(&pid.to_string());
    let inherited = theirs
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "0" | "1" | "2"))
        .filter(|(_, target)| !target.to_string_lossy().starts_with("anon_inode:"))
        .filter(|fd| ours.contains(fd))
        .count();
    (theirs.len() - inherited, inherited)
}

/// How many of `pid`'s fds are TCP connections (sockets listed in
/// /proc/net/tcp{,6} in a state other than LISTEN).
pub fn connection_fds(pid: u32) -> usize {
    let mut connections = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local remote st tx:rx tr:when retrnsmt uid timeout inode
            if fields.len() > 9 && fields[3] != "0A" {
                connections.insert(format!("socket:[{}]", fields[9]));
            }
        }
    }
    fds(&pid.to_string())
        .iter()
        .filter(|(_, target)| connections.contains(&*target.to_string_lossy()))
        .count()
}
