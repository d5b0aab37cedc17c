//! Processes seen from outside: signals, liveness, reaping, open fds and
//! TCP connections, through rustix and /proc (Linux).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
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

/// `pid` as rustix takes it.
///
/// # Panics
///
/// If `pid` is 0 or above `i32::MAX`: not a process.
pub fn pid_of(pid: u32) -> Pid {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .unwrap_or_else(|| panic!("{pid} is not a process id"))
}

/// Sends `signal` to `pid`.
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

/// Waits until `pid` no longer runs ([`alive`]); says whether it stopped
/// within `timeout`. A zombie counts as gone.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    poll(timeout, || (!alive(pid)).then_some(())).is_some()
}

/// Waits until `pid` has left the process table: it exited and was reaped,
/// here if it is our child (or was re-parented to us, see
/// [`become_subreaper`]), or by its own parent. Says whether that happened
/// within `timeout`. Stricter than [`wait_gone`]: a zombie is not gone.
pub fn wait_reaped(pid: u32, timeout: Duration) -> bool {
    let reaped = || {
        // Only this pid is waited for, so other children are left alone.
        let ours = rustix::process::waitpid(Some(pid_of(pid)), WaitOptions::NOHANG);
        match ours {
            Ok(Some(_)) => true,
            Ok(None) => false,
            // ECHILD: not ours; gone once it cannot be signalled (ESRCH).
            Err(_) => rustix::process::test_kill_process(pid_of(pid)).is_err(),
        }
    };
    poll(timeout, || reaped().then_some(())).is_some()
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
    let sockets: BTreeSet<String> = fds(&pid.to_string())
        .into_iter()
        .filter_map(|(_, target)| {
            let target = target.to_string_lossy();
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    if sockets.is_empty() {
        return 0;
    }
    let mut connections = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local remote st tx:rx tr:when retrnsmt uid timeout inode
            let mut fields = line.split_whitespace();
            let state = fields.nth(3);
            let inode = fields.nth(5);
            if let (Some(state), Some(inode)) = (state, inode) {
                connections += usize::from(state != "0A" && sockets.contains(inode));
            }
        }
    }
    connections
}

/// The bytes queued in the kernel, not yet read by the application, on
/// each TCP socket whose local end is `local`, by remote end (the `rx_queue`
/// of /proc/net/tcp). IPv4 only.
///
/// On a server's end of a connection this reads 0 once the server has read
/// what the client sent: a request that reads 0 there is in the server's
/// hands. (One read of the table serves any number of connections: with
/// many sockets in TIME_WAIT it is long to read.)
pub fn tcp_unread(local: SocketAddr) -> BTreeMap<SocketAddr, u64> {
    let mut unread = BTreeMap::new();
    let SocketAddr::V4(local) = local else {
        return unread;
    };
    // The kernel prints each address as the hex of its 32-bit value in host
    // byte order, and each port as a hex number.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(local.ip().octets()),
        local.port()
    );
    let parse = |hex: &str| -> Option<SocketAddr> {
        let (ip, port) = hex.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?.to_ne_bytes();
        Some(SocketAddr::from((ip, u16::from_str_radix(port, 16).ok()?)))
    };
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    for line in table.lines().skip(1) {
        // sl local remote st tx_queue:rx_queue ...
        let mut fields = line.split_whitespace().skip(1);
        if fields.next() != Some(local.as_str()) {
            continue;
        }
        let remote = fields.next().and_then(parse);
        let queues = fields.nth(1).and_then(|q| q.split_once(':'));
        let rx = queues.and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok());
        if let (Some(remote), Some(rx)) = (remote, rx) {
            unread.insert(remote, rx);
        }
    }
    unread
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn tcp_unread_counts_what_the_application_has_not_read() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let (here, there) = (server.local_addr().unwrap(), client.local_addr().unwrap());
        assert_eq!(tcp_unread(here).get(&there), Some(&0));
        (&client).write_all(b"hello").unwrap();
        let queued = poll(Duration::from_secs(20), || {
            tcp_unread(here).get(&there).copied().filter(|n| *n == 5)
        });
        assert_eq!(queued, Some(5));
        let mut buf = [0; 5];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(tcp_unread(here).get(&there), Some(&0));
        assert_eq!(tcp_unread(there).get(&here), Some(&0), "the client's end");
        let elsewhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(tcp_unread(elsewhere).is_empty());
    }

    #[test]
    fn connection_fds_counts_connections_not_listeners() {
        let pid = std::process::id();
        let before = connection_fds(pid);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(connection_fds(pid), before, "a listener is no connection");
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        // Other tests of this binary may open connections meanwhile.
        assert!(connection_fds(pid) >= before + 2);
    }

    #[test]
    fn a_reaped_child_is_gone_and_a_running_one_is_not() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(alive(pid));
        assert!(!wait_reaped(pid, Duration::from_millis(50)));
        signal(pid, Signal::KILL).unwrap();
        assert!(wait_reaped(pid, Duration::from_secs(20)));
        assert!(!alive(pid));
        // Already reaped here: `Child::wait` finds nothing to wait for.
        assert!(child.wait().is_err());
    }
}
