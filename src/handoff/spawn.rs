//! Starting the next generation, and the parent's handle on it.
//!
//! [`start`] prepares what exec needs (the program, argv, this process's
//! environment with fresh socket-activation variables, the passed fds at
//! 3, 4, ...) and hands it to [`sys::spawn`](crate::sys::spawn), which
//! creates the child on a thread of its own and returns at once: the
//! executor never waits for the child's exec, and no page table is copied.
//!
//! [`NextChild`] is the parent's handle. It learns when the child has
//! exec'd (or why it could not), kills it, learns when it exits and reaps
//! it, all without blocking the thread. Dropped before the child became the
//! next generation, it kills the child and sees that it is reaped.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitStatus;
use std::time::Duration;

use async_io::{Async, Timer};
use rustix::process::Pid;

use super::env::{render_listen_env, ACTIVATION_VARS};
use crate::sys::process;
use crate::sys::spawn::{self, Exec, Image, Spawn};

pub(crate) use crate::sys::spawn::Program;

/// **Test hook**, inert unless set: when a generation's environment has it
/// set to `1`, the child of its upgrades stops itself (SIGSTOP) between
/// clone and exec, so tests can hold a child there. It is read at each
/// upgrade and never passed on to the child.
pub(crate) const STOP_BEFORE_EXEC_VAR: &str = "SEAMLESS_TEST_STOP_BEFORE_EXEC";
/// systemd's `WatchdogSec=`: the pid that must send `WATCHDOG=1`.
const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// How often, at most, to look for the exit of a child we have no pidfd
/// for.
const MAX_REAP_INTERVAL: Duration = Duration::from_millis(100);

/// Starts `program` with `args` (argv\[0\] included), this process's
/// environment, and `fds` at 3, 4, ... described by the socket-activation
/// variables. Returns as soon as the child is on its way.
///
/// # Errors
///
/// A name or string that cannot be passed (`InvalidInput`), or the
/// spawning thread could not be started. Failures of the child itself
/// come from [`NextChild::exec`].
pub(crate) fn start(
    program: Program<'_>,
    args: &[OsString],
    fds: &[(&str, BorrowedFd<'_>)],
) -> io::Result<NextChild> {
    let names: Vec<&str> = fds.iter().map(|(name, _)| *name).collect();
    let (listen_fds, listen_fdnames) =
        render_listen_env(&names).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // systemd's watchdog names the main process in `WATCHDOG_PID`; if that
    // is us, the next generation will be, and feeds it under its own pid.
    let own_pid = std::process::id().to_string();
    let watchdog_ours = std::env::var_os(WATCHDOG_PID).is_some_and(|pid| pid == *own_pid);
    let mut pid_vars = vec!["LISTEN_PID"];
    if watchdog_ours {
        pid_vars.push(WATCHDOG_PID);
    }
    let mut env: Vec<Vec<u8>> = std::env::vars_os()
        .filter(|(key, _)| !ACTIVATION_VARS.iter().any(|var| key == OsStr::new(var)))
        .filter(|(key, _)| !pid_vars.iter().any(|var| key == OsStr::new(var)))
        .filter(|(key, _)| key != STOP_BEFORE_EXEC_VAR)
        .map(|(key, value)| [key.as_bytes(), b"=", value.as_bytes()].concat())
        .collect();
    env.push(format!("LISTEN_FDS={listen_fds}").into_bytes());
    env.push(format!("LISTEN_FDNAMES={listen_fdnames}").into_bytes());
    let stop_before_exec = std::env::var_os(STOP_BEFORE_EXEC_VAR).is_some_and(|v| v == "1");
    let fds: Vec<BorrowedFd<'_>> = fds.iter().map(|(_, fd)| *fd).collect();
    let image = Image::new(program, args, env, &pid_vars, &fds, stop_before_exec)?;
    Ok(NextChild {
        program: describe(program),
        spawn: spawn::spawn(image)?,
        state: State::Starting,
        kill_on_drop: true,
    })
}

fn describe(program: Program<'_>) -> String {
    match program {
        Program::Path(path) => format!("{:?}", path.as_os_str()),
        Program::Open(fd) => format!("the executable open as fd {}", fd.as_raw_fd()),
    }
}

/// The next generation, as its parent sees it until it is ready.
pub(crate) struct NextChild {
    program: String,
    spawn: Spawn,
    state: State,
    /// Killed and reaped when dropped: until it serves (see
    /// [`serves`](NextChild::serves)).
    kill_on_drop: bool,
}

enum State {
    /// Between clone and exec, or not created yet.
    Starting,
    /// Created (running the new program, or failed before) and not reaped.
    Created {
        pid: Pid,
        /// Readable once the child has exited; `None` where pidfds are
        /// unavailable, and then its exit is polled for.
        pidfd: Option<Async<OwnedFd>>,
    },
    /// Exited and reaped.
    Reaped(ExitStatus),
    /// Never created, or now the next generation: no longer ours.
    Gone,
}

impl fmt::Debug for NextChild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Starting => "starting",
            State::Created { .. } => "created",
            State::Reaped(_) => "reaped",
            State::Gone => "gone",
        };
        f.debug_struct("NextChild")
            .field("program", &self.program)
            .field("pid", &self.pid())
            .field("state", &state)
            .finish()
    }
}

impl NextChild {
    /// The child's pid, once it exists.
    pub(crate) fn pid(&self) -> Option<u32> {
        match &self.state {
            State::Created { pid, .. } => Some(pid.as_raw_nonzero().get().unsigned_abs()),
            _ => self
                .spawn
                .pid()
                .map(|pid| pid.as_raw_nonzero().get().unsigned_abs()),
        }
    }

    /// Waits until the child runs the new program; returns its pid.
    ///
    /// # Errors
    ///
    /// Says what failed: creating the child, or exec (naming the program
    /// and the errno), or the child died before exec. A child that was
    /// created is left for [`kill_and_reap`](NextChild::kill_and_reap).
    pub(crate) async fn exec(&mut self) -> io::Result<u32> {
        match self.settle().await {
            Exec::Done => self
                .pid()
                .ok_or_else(|| io::Error::other("the child has no pid")),
            Exec::Failed(errno) => Err(context(
                format!("executing {}", self.program),
                io::Error::from_raw_os_error(errno),
            )),
            Exec::DiedBefore => Err(io::Error::other(format!(
                "the child died before it could execute {}",
                self.program
            ))),
            Exec::NotStarted(Some(errno)) => Err(context(
                "creating the child process",
                io::Error::from_raw_os_error(errno),
            )),
            Exec::NotStarted(None) => Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the spawn was cancelled",
            )),
        }
    }

    /// Waits for the spawn to finish and takes note of the child.
    async fn settle(&mut self) -> Exec {
        let outcome = self.spawn.finished().await;
        if let State::Starting = self.state {
            self.state = match (outcome.created(), self.spawn.pid()) {
                (true, Some(pid)) => State::Created {
                    pid,
                    pidfd: open_pidfd(pid),
                },
                _ => State::Gone,
            };
        }
        outcome
    }

    /// Waits until the child exits, and reaps it. Never blocks the thread:
    /// it awaits the child's pidfd, or polls where there is none.
    ///
    /// # Errors
    ///
    /// There is no child to wait for, or reaping failed (`ECHILD` if
    /// someone else reaped it).
    pub(crate) async fn exited(&mut self) -> io::Result<ExitStatus> {
        self.settle().await;
        let mut interval = Duration::from_millis(1);
        loop {
            let pid = match &self.state {
                State::Created { pid, .. } => *pid,
                State::Reaped(status) => return Ok(*status),
                State::Starting | State::Gone => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "no child to wait for",
                    ))
                }
            };
            if let Some(status) = process::try_wait(pid)? {
                self.state = State::Reaped(status);
                return Ok(status);
            }
            match &self.state {
                State::Created {
                    pidfd: Some(pidfd), ..
                } => pidfd.readable().await?,
                _ => {
                    Timer::after(interval).await;
                    interval = (interval * 2).min(MAX_REAP_INTERVAL);
                }
            }
        }
    }

    /// Kills the child (SIGKILL), whether or not it has exec'd yet, and
    /// reaps it.
    ///
    /// # Errors
    ///
    /// As for [`exited`](NextChild::exited).
    pub(crate) async fn kill_and_reap(&mut self) -> io::Result<ExitStatus> {
        // A child stopped before exec is killed here; one not created yet
        // never runs.
        self.kill();
        self.settle().await;
        // It may have exec'd before the first kill could reach it.
        self.kill();
        self.exited().await
    }

    /// Sends `signal` to the child, if it runs (a stop for a generation
    /// that became ready as the service was told to stop).
    pub(crate) fn signal(&self, signal: rustix::process::Signal) {
        if let State::Created { pid, pidfd } = &self.state {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            if let Some(pidfd) = pidfd {
                use std::os::fd::AsFd;
                let _ = process::signal_pidfd(pidfd.as_fd(), signal);
                return;
            }
            let _ = pidfd;
            let _ = process::signal(*pid, signal);
        }
    }

    /// The child is the next generation now: hands it over for good (no
    /// kill, no reap).
    pub(crate) fn release(mut self) {
        self.state = State::Gone;
    }

    /// The child serves now, while its parent still watches it: dropping
    /// this handle (the parent stops, or gives up watching) must leave it
    /// alone.
    pub(crate) fn serves(&mut self) {
        self.kill_on_drop = false;
    }

    fn kill(&self) {
        match &self.state {
            State::Starting => self.spawn.cancel(),
            State::Created { pid, pidfd } => kill(*pid, pidfd.as_ref()),
            State::Reaped(_) | State::Gone => {}
        }
    }
}

impl Drop for NextChild {
    /// A child that did not become the next generation is never left
    /// running, nor as a zombie; one that serves is left alone.
    fn drop(&mut self) {
        if !self.kill_on_drop {
            return;
        }
        match std::mem::replace(&mut self.state, State::Gone) {
            State::Starting => {
                if let Some(pid) = self.spawn.abandon() {
                    process::kill(pid).ok();
                    reap_in_background(pid);
                }
            }
            State::Created { pid, pidfd } => {
                kill(pid, pidfd.as_ref());
                drop(pidfd);
                reap_in_background(pid);
            }
            State::Reaped(_) | State::Gone => {}
        }
    }
}

fn kill(pid: Pid, pidfd: Option<&Async<OwnedFd>>) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(pidfd) = pidfd {
        use std::os::fd::AsFd;
        let _ = process::kill_pidfd(pidfd.as_fd());
        return;
    }
    let _ = pidfd;
    let _ = process::kill(pid);
}

/// A pidfd registered with the reactor, where the system has them.
fn open_pidfd(pid: Pid) -> Option<Async<OwnedFd>> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return process::pidfd_open(pid).and_then(Async::new).ok();
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = pid;
        None
    }
}

/// Reaps a killed child: at once if it is gone already, else on a thread
/// that waits for it (a blocking `waitpid` on a thread of its own; no task
/// is spawned).
fn reap_in_background(pid: Pid) {
    if let Ok(Some(_)) = process::try_wait(pid) {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("seamless-reap".into())
        .spawn(move || process::wait_blocking(pid));
}

/// An `io::Error` that says what was being done; it keeps the cause's
/// kind, and the cause as its source.
pub(crate) fn context(what: impl Into<String>, cause: io::Error) -> io::Error {
    io::Error::new(
        cause.kind(),
        Context {
            what: what.into(),
            cause,
        },
    )
}

#[derive(Debug)]
struct Context {
    what: String,
    cause: io::Error,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.cause)
    }
}

impl std::error::Error for Context {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::path::Path;

    use super::*;

    fn sh(script: &str) -> Vec<OsString> {
        ["sh", "-c", script].map(OsString::from).to_vec()
    }

    #[test]
    fn runs_a_program_and_reaps_it() {
        let mut child = start(Program::Path(Path::new("/bin/sh")), &sh("exit 7"), &[]).unwrap();
        async_io::block_on(async {
            child.exec().await.unwrap();
            assert!(child.pid().is_some());
            // Its exit is awaited on the reactor, not polled for.
            #[cfg(target_os = "linux")]
            assert!(matches!(child.state, State::Created { pidfd: Some(_), .. }));
            assert_eq!(child.exited().await.unwrap().code(), Some(7));
        });
    }

    #[test]
    fn a_failed_exec_names_the_program_and_the_errno() {
        let missing = Path::new("/nonexistent/seamless-next");
        let mut child = start(Program::Path(missing), &sh(""), &[]).unwrap();
        async_io::block_on(async {
            let error = child.exec().await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::NotFound);
            let message = error.to_string();
            assert!(message.contains("/nonexistent/seamless-next"), "{message}");
            assert!(message.contains("(os error 2)"), "{message}");
            assert_eq!(child.exited().await.unwrap().code(), Some(127));
        });
    }

    #[test]
    fn kills_and_reaps_a_running_child() {
        let mut child = start(Program::Path(Path::new("/bin/sh")), &sh("sleep 60"), &[]).unwrap();
        async_io::block_on(async {
            child.exec().await.unwrap();
            let status = child.kill_and_reap().await.unwrap();
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(libc::SIGKILL));
            // Reaped: a second call returns the same status.
            assert_eq!(child.kill_and_reap().await.unwrap(), status);
        });
    }

    /// An executable kept open runs whatever happens to its path later,
    /// which is what a restart from one's own binary needs.
    #[test]
    fn execs_an_open_executable_after_its_file_was_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sh");
        std::fs::copy("/bin/sh", &path).unwrap();
        let open = process::open_executable(&path).unwrap();
        // A deploy replaces the file; the old one is only reachable by fd.
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, b"not a program").unwrap();
        std::fs::rename(&garbage, &path).unwrap();

        let mut by_path = start(Program::Path(&path), &sh("exit 7"), &[]).unwrap();
        let mut by_fd = start(Program::Open(open.as_fd()), &sh("exit 7"), &[]).unwrap();
        async_io::block_on(async {
            let error = by_path.exec().await.unwrap_err();
            assert!(error.to_string().contains("executing"), "{error}");
            by_path.kill_and_reap().await.unwrap();

            by_fd.exec().await.unwrap();
            assert_eq!(by_fd.exited().await.unwrap().code(), Some(7));
        });
    }

    #[test]
    fn places_the_passed_fds_and_nothing_else() {
        let (read, write) = crate::sys::pipe_cloexec().unwrap();
        // Opened without O_CLOEXEC, as a careless library would.
        let careless = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        // fd 3 is the pipe's write end: the child writes its fds and env
        // into it.
        let script = "{ ls /proc/self/fd | sort -n | tr '\\n' ' '; echo; \
                      echo \"$LISTEN_FDS $LISTEN_FDNAMES $LISTEN_PID $$\"; } >&3";
        let mut child = start(
            Program::Path(Path::new("/bin/sh")),
            &sh(script),
            &[("out", write.as_fd())],
        )
        .unwrap();
        drop(write);
        async_io::block_on(async {
            child.exec().await.unwrap();
            assert_eq!(child.exited().await.unwrap().code(), Some(0));
        });
        drop(careless);
        let mut out = String::new();
        use std::io::Read;
        std::fs::File::from(read).read_to_string(&mut out).unwrap();
        let mut lines = out.lines();
        // 0-2, fd 3, and the one `ls` used to list the directory.
        let fds: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(&fds[..4], ["0", "1", "2", "3"], "{out}");
        assert_eq!(fds.len(), 5, "{out}");
        let vars: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(vars[..2], ["1", "out"], "{out}");
        assert_eq!(vars[2], vars[3], "LISTEN_PID is the child's own pid: {out}");
    }

    #[test]
    fn a_dropped_child_is_killed_and_reaped() {
        let child = start(Program::Path(Path::new("/bin/sh")), &sh("sleep 60"), &[]).unwrap();
        let pid = async_io::block_on(async {
            let mut child = child;
            child.exec().await.unwrap();
            let pid = child.pid().unwrap();
            drop(child);
            pid
        });
        let pid = Pid::from_raw(pid as i32).unwrap();
        // Reaped by us, or by the background reaper: not our child anymore.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while rustix::process::test_kill_process(pid).is_ok() {
            assert!(std::time::Instant::now() < deadline, "{pid:?} still exists");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
