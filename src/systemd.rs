//! `sd_notify` for what only the application knows: status lines
//! ([`notify`], [`status`]), a drain's progress ([`DrainStatus`]) and the
//! watchdog ([`feed_watchdog`]). The library itself tells systemd when the
//! service is ready, reloading, handed over (`MAINPID=`) or stopping.
//!
//! Each message is one datagram to the socket named by `NOTIFY_SOCKET`,
//! sent without blocking; nothing is sent (`Ok(false)`) when that variable
//! is unset or empty, that is when the service was not started by systemd
//! with `Type=notify`. The variable is read on every call, never cached.
//!
//! # Unit file
//!
//! ```ini
//! [Service]
//! Type=notify
//! NotifyAccess=all
//! ExecStart=/usr/local/bin/myservice --listen 0.0.0.0:8080
//! ExecReload=/bin/kill -HUP $MAINPID
//! KillMode=control-group
//! # Longer than the drain deadline, so a stop is never cut short.
//! TimeoutStopSec=60
//! ```
//!
//! A hot restart goes like this: `systemctl reload` sends `SIGHUP` to the
//! main process, which sends `RELOADING=1` and starts the next generation as
//! its child. Once that child is ready, the old generation sends
//! `MAINPID=<child>` and `READY=1`, so systemd follows the service to its new
//! main process, and then drains and exits. If the upgrade fails, the old
//! generation goes on serving and sends `READY=1` again to end the reload.
//! The [`Upgrader`](crate::Upgrader) sends all of these itself; this module's
//! public functions are for what only the application knows: its status
//! line, its drain's progress, its watchdog.
//!
//! - **`NotifyAccess=all`**: with the default (`main`), systemd drops every
//!   message not sent by the main process. During a handoff the main process
//!   moves: the old generation reports `STATUS=` while it drains, after it
//!   has stopped being the main process, and a generation started by an
//!   old one reports for itself later. (`exec` is not enough either: the new
//!   generation is started by the service, not by an `Exec*=` line.)
//! - **`KillMode=control-group`** (the default, written out because it
//!   matters): on `systemctl stop`, `SIGTERM` goes to every process of the
//!   unit at once, so an old generation still draining and the new one each
//!   drain within their own deadline, and whatever is left after
//!   `TimeoutStopSec=` is killed. `KillMode=mixed` is wrong here: it sends
//!   `SIGTERM` only to the main process and `SIGKILL` to everything else as
//!   soon as the main process has exited, which cuts the requests an old
//!   generation is still finishing. `KillMode=process` is wrong the other
//!   way: it leaves a stuck old generation running after the unit has
//!   stopped.
//!
//! With systemd 253 or later, `Type=notify-reload` (which sends `SIGHUP`
//! itself, and needs no `ExecReload=`) works too: `RELOADING=1` comes with
//! the `MONOTONIC_USEC=` it asks for.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use rustix::time::{clock_gettime, ClockId};

use crate::conn::Counts;

/// Sends `state`, one or more newline-separated `KEY=value` assignments, to
/// systemd.
///
/// Returns `Ok(false)` without sending anything when `NOTIFY_SOCKET` is
/// unset or empty, `Ok(true)` once the datagram is sent.
///
/// # Errors
///
/// - [`io::ErrorKind::InvalidInput`] if `NOTIFY_SOCKET` is neither a path
///   (starting with `/`) nor an abstract socket name (starting with `@`).
/// - [`io::ErrorKind::Unsupported`] for an abstract socket name outside
///   Linux and Android.
/// - Any error from sending, for example if nothing listens on the socket,
///   or [`io::ErrorKind::WouldBlock`] if its queue is full: sending never
///   blocks.
///
/// # Examples
///
/// ```no_run
/// // Outside systemd nothing is sent, and that is not an error.
/// if !seamless::systemd::notify("READY=1")? {
///     println!("not started by systemd");
/// }
/// # std::io::Result::Ok(())
/// ```
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) if !socket.is_empty() => send_to(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Says the service is ready: `READY=1`.
///
/// # Errors
///
/// As [`notify`].
pub(crate) fn ready() -> io::Result<bool> {
    notify("READY=1")
}

/// Says the service is reloading (here: starting its next generation):
/// `RELOADING=1` with the current `CLOCK_MONOTONIC` time in
/// `MONOTONIC_USEC=`. Send [`ready`] or [`main_pid_ready`] when it is over.
///
/// # Errors
///
/// As [`notify`].
pub(crate) fn reloading() -> io::Result<bool> {
    notify(&reloading_message(monotonic_usec()))
}

/// Says the service is stopping: `STOPPING=1`.
///
/// # Errors
///
/// As [`notify`].
pub(crate) fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// Says `pid` is now the service's main process, and is ready:
/// `MAINPID=<pid>` and `READY=1`.
///
/// An old generation sends this once its successor is ready, before it
/// starts draining, so that systemd neither takes the old generation's exit
/// for the service's end nor keeps waiting for the reload to finish.
///
/// # Errors
///
/// As [`notify`].
pub(crate) fn main_pid_ready(pid: u32) -> io::Result<bool> {
    notify(&main_pid_ready_message(pid))
}

/// Sets the status line `systemctl status` shows: `STATUS=<text>`.
///
/// Newlines and other control characters in `text` become spaces: each line
/// of a notification is an assignment of its own, so a newline would let the
/// text say something else.
///
/// # Errors
///
/// As [`notify`].
pub fn status(text: &str) -> io::Result<bool> {
    notify(&status_message(text))
}

/// Drain progress for systemd, fed by
/// [`Tracker::report_drain`](crate::Tracker::report_drain).
///
/// Each report sets the status line (`STATUS=draining: N connections
/// left`), and, as long as connections keep closing, asks for more time
/// (`EXTEND_TIMEOUT_USEC=`) so that a drain which runs past `TimeoutStopSec=`
/// but is still making progress is not killed. A drain that stops making
/// progress gets no more time: systemd's own timeout applies again.
///
/// ```no_run
/// use std::time::Duration;
/// use seamless::systemd::DrainStatus;
/// use seamless::{Shutdown, Tracker};
///
/// # futures_lite::future::block_on(async {
/// let shutdown = Shutdown::new();
/// let tracker = Tracker::new(&shutdown);
/// let every = Duration::from_millis(500);
/// let mut status = DrainStatus::new(every);
/// tracker.report_drain(every, |counts| { let _ = status.report(counts); }).await;
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct DrainStatus {
    extend_by: Duration,
    last_total: Option<usize>,
}

impl DrainStatus {
    /// For reports `every` apart; each extension covers three reports, so
    /// one late report does not end it.
    pub fn new(every: Duration) -> Self {
        DrainStatus {
            extend_by: every.saturating_mul(3),
            last_total: None,
        }
    }

    /// Sends the status line, and more time if connections closed since the
    /// last report. Returns whether anything was sent (nothing outside
    /// systemd).
    ///
    /// # Errors
    ///
    /// As [`notify`].
    pub fn report(&mut self, counts: Counts) -> io::Result<bool> {
        let progress = self.last_total.is_none_or(|last| counts.total < last);
        self.last_total = Some(counts.total);
        let s = if counts.total == 1 { "" } else { "s" };
        let mut message = status_message(&format!(
            "draining: {} connection{s} left (busy {}, idle {}, new {}, closing {})",
            counts.total, counts.busy, counts.idle, counts.new, counts.closing
        ));
        if progress && counts.total > 0 {
            message.push_str(&format!(
                "\nEXTEND_TIMEOUT_USEC={}",
                self.extend_by.as_micros()
            ));
        }
        notify(&message)
    }
}

/// How often systemd expects `WATCHDOG=1` (`WatchdogSec=`), if it does:
/// `WATCHDOG_USEC` is set and `WATCHDOG_PID`, when set, is this process.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let var = |name| std::env::var_os(name).map(|v| v.as_bytes().to_vec());
    watchdog_interval_from(
        var("WATCHDOG_USEC").as_deref(),
        var("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(
    usec: Option<&[u8]>,
    pid: Option<&[u8]>,
    own_pid: u32,
) -> Option<Duration> {
    let number = |bytes: &[u8]| std::str::from_utf8(bytes).ok()?.parse::<u64>().ok();
    if let Some(pid) = pid {
        if number(pid) != Some(u64::from(own_pid)) {
            return None; // meant for another process
        }
    }
    let usec = number(usec?)?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Keeps systemd's watchdog fed: sends `WATCHDOG=1` at half the interval
/// `WATCHDOG_USEC` gives (when `WATCHDOG_PID` is unset or names this
/// process), for as long as it is polled. Never resolves; race
/// it against [`Shutdown::stopped`](crate::Shutdown::stopped) beside your
/// other work. Without a watchdog it just waits forever, sending nothing.
///
/// A process that stops polling it (its executor is stuck) stops feeding
/// the watchdog, which is the point.
pub async fn feed_watchdog() {
    let Some(interval) = watchdog_interval() else {
        return std::future::pending().await;
    };
    loop {
        if let Err(e) = notify("WATCHDOG=1") {
            tracing::warn!(%e, "sending WATCHDOG=1");
        }
        async_io::Timer::after(interval / 2).await;
    }
}

fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
}

fn main_pid_ready_message(pid: u32) -> String {
    format!("MAINPID={pid}\nREADY=1")
}

fn status_message(text: &str) -> String {
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("STATUS={text}")
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares with.
fn monotonic_usec() -> u64 {
    let now = clock_gettime(ClockId::Monotonic);
    // Never negative for this clock; saturate rather than wrap if it were.
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let micros = u64::try_from(now.tv_nsec / 1_000).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(micros)
}

/// Sends `msg` to the socket `NOTIFY_SOCKET` names.
fn send_to(socket: &OsStr, msg: &str) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let sender = UnixDatagram::unbound()?;
    // Never block the caller's executor: a notify socket whose queue is full
    // (a stuck or slow reader) fails this message with `WouldBlock`.
    sender.set_nonblocking(true)?;
    let sent = match bytes.first() {
        Some(b'/') => sender.send_to(msg.as_bytes(), socket)?,
        Some(b'@') => send_to_abstract(&sender, &bytes[1..], msg)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "NOTIFY_SOCKET=\"{}\" is neither a path (starting with '/') \
                     nor an abstract socket name (starting with '@')",
                    bytes.escape_ascii()
                ),
            ))
        }
    };
    // A datagram is sent whole or not at all; check anyway rather than
    // report a truncated message as sent.
    if sent != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent only {sent} of {} bytes to NOTIFY_SOCKET", msg.len()),
        ));
    }
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_to_abstract(sender: &UnixDatagram, name: &[u8], msg: &str) -> io::Result<usize> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;

    let addr = SocketAddr::from_abstract_name(name)?;
    sender.send_to_addr(msg.as_bytes(), &addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_to_abstract(_: &UnixDatagram, name: &[u8], _: &str) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "NOTIFY_SOCKET=\"@{}\" is an abstract socket, which only Linux has",
            name.escape_ascii()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn messages() {
        assert_eq!(
            reloading_message(123_456),
            "RELOADING=1\nMONOTONIC_USEC=123456"
        );
        assert_eq!(main_pid_ready_message(77), "MAINPID=77\nREADY=1");
        assert_eq!(status_message("draining"), "STATUS=draining");
        assert_eq!(
            status_message("3 busy\nREADY=1\r\0x"),
            "STATUS=3 busy READY=1  x"
        );
    }

    #[test]
    fn watchdog_interval_is_for_this_process_only() {
        let from = watchdog_interval_from;
        assert_eq!(
            from(Some(b"500000"), None, 7),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            from(Some(b"500000"), Some(b"7"), 7),
            Some(Duration::from_millis(500))
        );
        assert_eq!(from(Some(b"500000"), Some(b"8"), 7), None);
        assert_eq!(from(Some(b"0"), None, 7), None);
        assert_eq!(from(Some(b"junk"), None, 7), None);
        assert_eq!(from(None, Some(b"7"), 7), None);
    }

    #[test]
    fn monotonic_moves_forward() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn send_to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();

        send_to(path.as_os_str(), "READY=1").unwrap();
        assert_eq!(recv(&socket), "READY=1");
        send_to(path.as_os_str(), &main_pid_ready_message(9)).unwrap();
        assert_eq!(recv(&socket), "MAINPID=9\nREADY=1");
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn send_to_an_abstract_name() {
        #[cfg(target_os = "android")]
        use std::os::android::net::SocketAddrExt;
        #[cfg(target_os = "linux")]
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::SocketAddr;

        let name = format!("seamless-test-{}-{}", std::process::id(), monotonic_usec());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();

        send_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        assert_eq!(recv(&socket), "STOPPING=1");
    }

    #[test]
    fn bad_socket_values() {
        for bad in ["relative/path", "vsock:2:1234", " /leading-space"] {
            let err = send_to(OsStr::new(bad), "READY=1").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
            assert!(err.to_string().contains(bad), "{err}");
        }
        let err = send_to(OsStr::from_bytes(b"\xffx"), "READY=1").unwrap_err();
        assert!(err.to_string().contains("\\xffx"), "{err}");
    }

    /// A reader that does not keep up must not stall the sender.
    #[test]
    fn a_full_socket_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.sock");
        let _socket = UnixDatagram::bind(&path).unwrap();
        // Far more than any datagram queue holds; a blocking send would hang,
        // so the sends run on a thread and the test waits a bounded time.
        let (done, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let first = send_to(path.as_os_str(), "WATCHDOG=1").map_err(|e| e.kind());
            let full = (0..10_000)
                .find_map(|_| send_to(path.as_os_str(), "WATCHDOG=1").err())
                .map(|e| e.kind());
            let _ = done.send((first, full));
        });
        let (first, full) = outcome
            .recv_timeout(Duration::from_secs(20))
            .expect("sending to a full notify socket blocked");
        assert_eq!(first, Ok(()));
        assert_eq!(full, Some(io::ErrorKind::WouldBlock));
    }

    #[test]
    fn nobody_listening_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody.sock");
        assert!(send_to(path.as_os_str(), "READY=1").is_err());
    }
}
