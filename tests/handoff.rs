//! Hot restart with real processes, signals and fds: rollback, concurrency,
//! fd hygiene, socket activation and sd_notify.
//!
//! This file is its own `main` (`harness = false`) so that a child can list
//! its fds before anything else opens one. Run as `handoff` it is the test
//! driver; run as `handoff --serve ...` (by the driver, or by a previous
//! generation) it is a tiny server that writes its pid to every connection.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_io::Async;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use rustix::process::Signal;
use seamless::handoff::{Options, UpgradeError, Upgrader};
use seamless::signals::SignalHandler;
use seamless::{Shutdown, Tracker};
use seamless_test_support::procs;

/// Generous: the machine is small and noisy.
const TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    // First thing, before this process opens anything of its own.
    let fds_at_start = open_fds();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--serve") => serve(&args, &fds_at_start),
        Some("--bad") => bad_child(args.get(2).map_or("", String::as_str)),
        Some("--activated") => activated(&fds_at_start),
        Some("--ready-fails") => ready_fails(),
        Some("--bad-names") => bad_names(),
        _ => run_tests(&args[1..]),
    }
}

type Test = (&'static str, fn());

fn run_tests(args: &[String]) -> ExitCode {
    let tests: &[Test] = &[
        (
            "rollback_child_exits_before_ready",
            rollback_child_exits_before_ready,
        ),
        ("rollback_child_never_ready", rollback_child_never_ready),
        (
            "rollback_child_writes_garbage",
            rollback_child_writes_garbage,
        ),
        (
            "second_upgrade_is_refused_while_one_runs",
            second_upgrade_is_refused_while_one_runs,
        ),
        (
            "upgrade_is_refused_before_ready",
            upgrade_is_refused_before_ready,
        ),
        (
            "child_starts_with_only_the_passed_fds",
            child_starts_with_only_the_passed_fds,
        ),
        (
            "a_signal_during_start_up_does_not_kill_the_new_generation",
            a_signal_during_start_up_does_not_kill_the_new_generation,
        ),
        ("socket_activation_by_name", socket_activation_by_name),
        ("socket_activation_bad_values", socket_activation_bad_values),
        (
            "sd_notify_sequence_across_a_restart",
            sd_notify_sequence_across_a_restart,
        ),
        (
            "socket_activation_for_another_process_is_ignored",
            socket_activation_for_another_process_is_ignored,
        ),
        (
            "a_parent_killed_while_its_child_starts_leaves_the_child_serving",
            a_parent_killed_while_its_child_starts_leaves_the_child_serving,
        ),
        (
            "ready_after_a_failed_ready_fails_again",
            ready_after_a_failed_ready_fails_again,
        ),
        (
            "bad_names_are_refused_where_given",
            bad_names_are_refused_where_given,
        ),
        // Spawning (see the section at the end of this file).
        (
            "the_parent_serves_while_its_child_is_stopped_before_exec",
            the_parent_serves_while_its_child_is_stopped_before_exec,
        ),
        (
            "a_signal_to_the_child_before_exec_is_the_childs",
            a_signal_to_the_child_before_exec_is_the_childs,
        ),
        (
            "no_thread_of_a_new_generation_blocks_signals",
            no_thread_of_a_new_generation_blocks_signals,
        ),
        (
            "a_signal_held_during_start_up_acts_once",
            a_signal_held_during_start_up_acts_once,
        ),
        (
            "a_start_up_signal_without_a_handler_takes_effect_at_ready",
            a_start_up_signal_without_a_handler_takes_effect_at_ready,
        ),
        (
            "a_failed_exec_names_the_program_and_the_errno",
            a_failed_exec_names_the_program_and_the_errno,
        ),
        (
            "emfile_on_the_readiness_pipe_is_a_spawn_error",
            emfile_on_the_readiness_pipe_is_a_spawn_error,
        ),
        // Faults during an upgrade (see the section at the end of this file).
        (
            "a_stop_during_an_upgrade_kills_the_child",
            a_stop_during_an_upgrade_kills_the_child,
        ),
        (
            "killing_the_child_at_each_phase_leaves_one_generation",
            killing_the_child_at_each_phase_leaves_one_generation,
        ),
        (
            "killing_the_parent_just_after_ready_leaves_the_child_serving",
            killing_the_parent_just_after_ready_leaves_the_child_serving,
        ),
        (
            "a_generation_dying_in_probation_is_replaced",
            a_generation_dying_in_probation_is_replaced,
        ),
        (
            "stops_at_random_points_of_upgrades_leave_nothing",
            stops_at_random_points_of_upgrades_leave_nothing,
        ),
        (
            "a_successor_that_never_reads_its_channel_gets_no_connection",
            a_successor_that_never_reads_its_channel_gets_no_connection,
        ),
        (
            "state_and_extra_fds_reach_the_next_generation",
            state_and_extra_fds_reach_the_next_generation,
        ),
        (
            "the_next_generation_feeds_the_watchdog",
            the_next_generation_feeds_the_watchdog,
        ),
        (
            "a_bad_inherited_fd_leaks_nothing",
            a_bad_inherited_fd_leaks_nothing,
        ),
        (
            "a_stop_in_probation_ends_only_the_old_generation",
            a_stop_in_probation_ends_only_the_old_generation,
        ),
        (
            "a_stopping_generation_starts_no_replacement",
            a_stopping_generation_starts_no_replacement,
        ),
    ];
    // Orphaned generations are re-parented to us, so we can reap them and
    // prove none is left behind.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .expect("become a child subreaper");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        eprintln!("test {name} ...");
        match std::panic::catch_unwind(test) {
            Ok(()) => {
                passed += 1;
                eprintln!("test {name} ... ok");
            }
            Err(_) => {
                failed += 1;
                eprintln!("test {name} ... FAILED");
            }
        }
    }
    println!("\ntest result: {passed} passed, {failed} failed");
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------- the tests

/// Also tells systemd who serves after the rollback: this process, as the
/// main pid too (a failed child may have claimed it).
fn rollback_child_exits_before_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let server = Server::start(
        &["--next", "exit"],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    let mut messages = Messages::new(socket);
    assert_eq!(messages.next(), "READY=1");
    server.sighup();
    let line = server.expect(&format!("event {} upgrade failed", server.pid));
    assert!(line.contains("exited before it was ready"), "{line}");
    assert!(line.contains("exit status: 3"), "{line}");
    assert!(messages.next().starts_with("RELOADING=1\n"));
    assert_eq!(
        messages.next_not_status(),
        format!("MAINPID={}\nREADY=1", server.pid)
    );
    server.assert_still_serving_alone();
    server.stop();
}

fn rollback_child_never_ready() {
    let server = Server::start(&["--next", "hang", "--ready-timeout-ms", "500"], &[]);
    server.sighup();
    let line = server.expect(&format!("event {} upgrade failed", server.pid));
    assert!(line.contains("not ready within 500ms"), "{line}");
    server.assert_still_serving_alone();
    server.stop();
}

fn rollback_child_writes_garbage() {
    let server = Server::start(&["--next", "garbage"], &[]);
    server.sighup();
    let line = server.expect(&format!("event {} upgrade failed", server.pid));
    assert!(line.contains("garbage"), "{line}");
    assert!(
        line.contains("hello"),
        "the error shows what was written: {line}"
    );
    server.assert_still_serving_alone();
    server.stop();
}

fn second_upgrade_is_refused_while_one_runs() {
    let server = Server::start(&["--next", "hang", "--ready-timeout-ms", "3000"], &[]);
    server.sighup();
    server.expect(&format!(
        "event {} Hup: starting the next generation",
        server.pid
    ));
    server.sighup();
    let refused = server.expect(&format!("event {} upgrade failed", server.pid));
    assert!(refused.contains("already in progress"), "{refused}");
    let timed_out = server.expect(&format!("event {} upgrade failed", server.pid));
    assert!(timed_out.contains("not ready within"), "{timed_out}");
    server.assert_still_serving_alone();
    server.stop();
}

fn upgrade_is_refused_before_ready() {
    // In this process: nothing was inherited, so this takes nothing.
    let shutdown = Shutdown::new();
    let upgrader = Upgrader::new(&shutdown, Options::default()).expect("upgrader");
    assert!(!upgrader.has_parent());
    let refused = future::block_on(upgrader.upgrade());
    assert!(
        matches!(refused, Err(UpgradeError::NotReady)),
        "{refused:?}"
    );
    let again = Upgrader::new(&shutdown, Options::default());
    assert!(
        again.is_err(),
        "a second Upgrader must not take the fds again"
    );
}

fn child_starts_with_only_the_passed_fds() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    // The first generation leaks an fd without CLOEXEC, as a careless
    // library would; the next generation must not get it.
    let server = Server::start(&["--careless", "--fds-out", out], &[]);
    server.sighup();
    let line = server.expect(&format!("event {} generation", server.pid));
    let child: u32 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    let listed = std::fs::read_to_string(dir.path().join(child.to_string())).unwrap();
    let fds: BTreeSet<i32> = listed.split(',').map(|fd| fd.parse().unwrap()).collect();
    // stdio, the listener at 3 and the readiness pipe at 4: nothing else.
    assert_eq!(fds, BTreeSet::from([0, 1, 2, 3, 4]), "child's fds at start");
    assert_eq!(ask_pid(server.addr), child, "the new generation serves");
    server.expect(&format!("stopped {}", server.pid));
    wait_gone(server.pid);
    kill(child, Signal::TERM);
    server.expect(&format!("stopped {child}"));
    wait_gone(child);
}

fn a_signal_during_start_up_does_not_kill_the_new_generation() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--hold-start", dir.path().to_str().unwrap()], &[]);
    let let_go = |pid: u32| std::fs::write(dir.path().join(format!("go-{pid}")), "").unwrap();
    server.sighup();
    let starting = server.expect("start-held ");
    let second: u32 = starting.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SIGHUP's default action is to terminate; the new generation has no
    // handler yet. It must survive, and act on the signal once it can.
    kill(second, Signal::HUP);
    let_go(second);
    server.expect(&format!("ready {second} "));
    server.expect(&format!(
        "event {} generation {second} is ready",
        server.pid
    ));
    server.expect(&format!("event {second} Hup: starting the next generation"));
    let starting = server.expect("start-held ");
    let third: u32 = starting.split_whitespace().nth(1).unwrap().parse().unwrap();
    let_go(third);
    server.expect(&format!("event {second} generation {third} is ready"));
    assert_eq!(ask_pid(server.addr), third);
    for pid in [server.pid, second] {
        server.expect(&format!("stopped {pid}"));
        wait_gone(pid);
    }
    kill(third, Signal::TERM);
    server.expect(&format!("stopped {third}"));
    wait_gone(third);
}

fn socket_activation_by_name() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (out, code) = activate(
        Some(&listener),
        ListenPid::Own,
        &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "web")],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("activated {addr}")), "{out}");
    assert!(out.contains("inherited"), "{out}");
    // What systemd passes is re-marked close-on-exec, and nothing else is open.
    assert!(out.contains("fds 0,1,2,3"), "{out}");
}

/// `LISTEN_*` meant for another process (or for none) are ignored, as
/// `sd_listen_fds()` does: the service starts with a fresh socket.
fn socket_activation_for_another_process_is_ignored() {
    type Case = (&'static [(&'static str, &'static str)], ListenPid);
    let cases: &[Case] = &[
        (&[("LISTEN_FDS", "1")], ListenPid::Value("1")),
        (
            &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "web")],
            ListenPid::Unset,
        ),
        (&[("LISTEN_FDS", "junk")], ListenPid::Value("1")),
    ];
    for (vars, pid) in cases {
        let (out, code) = activate(None, *pid, vars);
        assert_eq!(code, Some(0), "{vars:?} {pid:?}: {out}");
        assert!(out.contains("activated") && out.contains("fresh"), "{out}");
        assert!(!out.contains("error"), "{out}");
    }
}

/// D4: the parent is killed while its child is still starting. The child
/// must carry on as the only generation, and the pid file must name it.
fn a_parent_killed_while_its_child_starts_leaves_the_child_serving() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("server.pid");
    let mut server = Server::start(
        &[
            "--hold-start",
            dir.path().to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        &[],
    );
    server.sighup();
    let starting = server.expect("start-held ");
    let second: u32 = starting.split_whitespace().nth(1).unwrap().parse().unwrap();
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    std::fs::write(dir.path().join(format!("go-{second}")), "").unwrap();
    server.expect(&format!("ready {second} "));
    assert_eq!(ask_pid(server.addr), second, "the child serves");
    let written = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(written.trim(), second.to_string(), "the pid file names it");
    kill(second, Signal::TERM);
    server.expect(&format!("stopped {second}"));
    wait_gone(second);
}

/// D7: `ready()` after a failed `ready()` must not claim success.
fn ready_after_a_failed_ready_fails_again() {
    let out = Command::new(exe()).arg("--ready-fails").output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("first: error"), "{out}");
    assert!(
        out.contains("pid file"),
        "the error names the pid file: {out}"
    );
    assert!(out.contains("second: error"), "{out}");
    assert!(out.contains("is_ready false"), "{out}");
}

/// D8: names that cannot be passed on are refused when given, naming the
/// name; the next upgrade still works.
fn bad_names_are_refused_where_given() {
    let out = Command::new(exe()).arg("--bad-names").output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    for name in ["\"\"", "\"admin:v2\"", "\"seamless-ready\""] {
        let line = out
            .lines()
            .find(|line| line.starts_with(&format!("name {name} ")))
            .unwrap_or_else(|| panic!("no line for {name}: {out}"));
        assert!(line.contains("refused"), "{line}");
        assert!(line.contains(name), "the error names the name: {line}");
    }
    assert!(out.contains("upgraded to "), "{out}");
    assert!(out.contains("child names main"), "{out}");
}

fn socket_activation_bad_values() {
    type Case = (
        &'static [(&'static str, &'static str)],
        ListenPid,
        &'static str,
    );
    let cases: &[Case] = &[
        (&[("LISTEN_FDS", "abc")], ListenPid::Own, "LISTEN_FDS"),
        (
            &[("LISTEN_FDS", "99999999999999999999")],
            ListenPid::Own,
            "LISTEN_FDS",
        ),
        (
            &[("LISTEN_FDS", "1")],
            ListenPid::Value("pid"),
            "LISTEN_PID",
        ),
        (
            &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "web")],
            ListenPid::Own,
            "is not open",
        ),
    ];
    for (vars, pid, expected) in cases {
        let (out, code) = activate(None, *pid, vars);
        assert_eq!(code, Some(2), "{vars:?}: {out}");
        assert!(
            out.contains("error: bad socket-activation") || out.contains("error: inherited"),
            "{vars:?}: {out}"
        );
        assert!(
            out.contains(expected),
            "{vars:?} should name {expected}: {out}"
        );
    }
    // A socket of the wrong kind under the expected name.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (out, code) = activate(
        Some(&udp),
        ListenPid::Own,
        &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "web")],
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("should be a listening TCP socket"), "{out}");
}

fn sd_notify_sequence_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let server = Server::start(
        &["--hold-ms", "300"],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "100000"),
        ],
    );
    let mut messages = Messages::new(socket);
    assert_eq!(messages.next(), "READY=1");
    messages.wait_watchdog();

    // A request in flight, so the old generation has something to drain.
    let mut busy = TcpStream::connect(server.addr).unwrap();
    busy.write_all(b"hold\n").unwrap();
    server.expect(&format!("holding {}", server.pid));
    server.sighup();
    let reloading = messages.next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let line = server.expect(&format!("event {} generation", server.pid));
    let child: u32 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(messages.next(), format!("MAINPID={child}\nREADY=1"));
    let status = messages.next();
    assert!(
        status.starts_with("STATUS=draining: 1 connection left"),
        "{status}"
    );
    assert!(
        status.contains("\nEXTEND_TIMEOUT_USEC=150000"),
        "a drain making progress asks for more time: {status}"
    );
    let mut reply = String::new();
    busy.read_to_string(&mut reply).unwrap();
    assert_eq!(
        reply,
        format!("{}\n", server.pid),
        "the held request completes on the old generation"
    );
    server.expect(&format!("stopped {}", server.pid));
    wait_gone(server.pid);

    kill(child, Signal::TERM);
    assert_eq!(messages.next_not_status(), "STOPPING=1");
    server.expect(&format!("stopped {child}"));
    wait_gone(child);
}

// ------------------------------------------------------------ the driver side

/// A first generation started by the driver, with its stdout (shared by all
/// later generations) read line by line.
struct Server {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    unmatched: std::cell::RefCell<Vec<String>>,
}

impl Server {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_with(args, env, false)
    }

    /// In a process group of its own, which its later generations share: a
    /// signal to the group reaches the whole service, as systemd sends it.
    fn start_in_own_group(args: &[&str]) -> Server {
        Self::start_with(args, &[], true)
    }

    fn start_with(args: &[&str], env: &[(&str, &str)], own_group: bool) -> Server {
        let mut command = Command::new(exe());
        command
            .arg("--serve")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped());
        if own_group {
            command.process_group(0);
        }
        Self::run(command)
    }

    /// Starts `command`, which must exec this binary with `--serve`, and
    /// waits until it serves.
    fn run(mut command: Command) -> Server {
        let mut child = command.spawn().expect("start the server");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("  | {line}");
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            pid: child.id(),
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            lines,
            unmatched: Default::default(),
        };
        let ready = server.expect(&format!("ready {} ", server.pid));
        server.addr = ready.split_whitespace().nth(2).unwrap().parse().unwrap();
        server
    }

    /// Takes the first line containing `what`, seen already or still to
    /// come. Generations write concurrently, so their lines interleave in any
    /// order; each line is taken once.
    fn expect(&self, what: &str) -> String {
        let mut unmatched = self.unmatched.borrow_mut();
        if let Some(at) = unmatched.iter().position(|line| line.contains(what)) {
            return unmatched.remove(at);
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(line) => unmatched.push(line),
                Err(e) => panic!("no line with {what:?} within {TIMEOUT:?}: {e}"),
            }
        }
    }

    fn sighup(&self) {
        kill(self.pid, Signal::HUP);
    }

    /// The first generation still answers, and no child of it is left.
    fn assert_still_serving_alone(&self) {
        assert_eq!(ask_pid(self.addr), self.pid);
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid)).unwrap();
        assert_eq!(children.trim(), "", "no child (zombie or not) is left");
    }

    fn stop(mut self) {
        kill(self.pid, Signal::TERM);
        self.expect(&format!("stopped {}", self.pid));
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
    }
}

impl Drop for Server {
    /// A failed test leaves nothing running: as the subreaper, every
    /// generation is our descendant.
    fn drop(&mut self) {
        if std::thread::panicking() {
            kill_descendants(std::process::id());
        }
    }
}

fn kill_descendants(pid: u32) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            kill_descendants(child);
            let _ = procs::signal(child, Signal::KILL);
            let _ = rustix::process::waitpid(
                Some(procs::pid_of(child)),
                rustix::process::WaitOptions::empty(),
            );
        }
    }
}

/// Connects and reads the pid of the generation that answers.
fn ask_pid(addr: SocketAddr) -> u32 {
    let mut stream = TcpStream::connect(addr).expect("the service accepts");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(b"pid\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("bad reply {reply:?}"))
}

fn kill(pid: u32, signal: Signal) {
    procs::signal(pid, signal).expect("send a signal");
}

/// Waits until `pid` is gone, reaping it if it was (re-parented to) ours.
fn wait_gone(pid: u32) {
    assert!(
        procs::wait_reaped(pid, TIMEOUT),
        "process {pid} still exists after {TIMEOUT:?}"
    );
}

#[derive(Debug, Clone, Copy)]
enum ListenPid {
    /// `LISTEN_PID` is the child's own pid, as systemd sets it.
    Own,
    Value(&'static str),
    Unset,
}

/// Plays systemd: starts `--activated` with `fd` (if any) at 3 and the given
/// variables. Returns its stdout and exit code.
fn activate(
    fd: Option<&dyn AsRawFd>,
    pid: ListenPid,
    vars: &[(&str, &str)],
) -> (String, Option<i32>) {
    let mut command = match pid {
        // The shell sets LISTEN_PID to its own pid, then execs: same pid.
        ListenPid::Own => {
            let mut c = Command::new("/bin/sh");
            c.args([
                "-c",
                "LISTEN_PID=$$ exec \"$0\" --activated",
                exe().to_str().unwrap(),
            ]);
            c
        }
        ListenPid::Value(value) => {
            let mut c = Command::new(exe());
            c.arg("--activated").env("LISTEN_PID", value);
            c
        }
        ListenPid::Unset => {
            let mut c = Command::new(exe());
            c.arg("--activated").env_remove("LISTEN_PID");
            c
        }
    };
    command.envs(vars.iter().copied()).stdout(Stdio::piped());
    if let Some(fd) = fd {
        let raw = fd.as_raw_fd();
        // SAFETY: dup2 and fcntl are async-signal-safe and allocate nothing.
        unsafe {
            command.pre_exec(move || {
                // dup2 onto itself would keep FD_CLOEXEC set.
                let rc = if raw == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(raw, 3)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = command.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut out = String::new();
    let reader = std::thread::spawn(move || stdout.read_to_string(&mut out).map(|_| out));
    if let (Some(fd), ListenPid::Own) = (fd, pid) {
        // Let a healthy child show it can accept; a failing one has exited.
        if let Ok(addr) = local_addr(fd.as_raw_fd()) {
            if let Ok(mut stream) = TcpStream::connect(addr) {
                let mut hi = String::new();
                stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                let _ = stream.read_to_string(&mut hi);
            }
        }
    }
    let status = child.wait().unwrap();
    (reader.join().unwrap().unwrap(), status.code())
}

fn local_addr(fd: i32) -> std::io::Result<SocketAddr> {
    // SAFETY: `fd` is open for the duration of this call (the caller holds it).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let addr = rustix::net::getsockname(fd)?;
    SocketAddr::try_from(addr).map_err(|_| std::io::Error::other("not an inet socket"))
}

/// Datagrams received on a notify socket, read as they arrive by a thread
/// of their own (as systemd reads its socket), so that the socket's small
/// queue never fills while the test waits for something else. Watchdog
/// pings, which come at their own pace, are counted apart.
struct Messages {
    received: mpsc::Receiver<String>,
    watchdog: usize,
}

impl Messages {
    fn new(socket: UnixDatagram) -> Self {
        let (send, received) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if send.send(message).is_err() {
                            return;
                        }
                    }
                    // The read timeout: see whether the test is still there.
                    Err(_) => {
                        if send.send(String::new()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Messages {
            received,
            watchdog: 0,
        }
    }

    /// The next message that is not a watchdog ping.
    fn next(&mut self) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.received.recv_timeout(left) {
                Ok(message) if message.is_empty() => {}
                Ok(message) if message == "WATCHDOG=1" => self.watchdog += 1,
                Ok(message) => return message,
                Err(_) => panic!("no sd_notify message within {TIMEOUT:?}"),
            }
        }
    }

    /// Waits for a few watchdog pings; nothing else is sent meanwhile.
    fn wait_watchdog(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        while self.watchdog < 3 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.received.recv_timeout(left) {
                Ok(message) if message.is_empty() => {}
                Ok(message) => {
                    assert_eq!(message, "WATCHDOG=1", "only pings while idle");
                    self.watchdog += 1;
                }
                Err(_) => panic!("watchdog pings: {}", self.watchdog),
            }
        }
    }

    fn next_not_status(&mut self) -> String {
        loop {
            let message = self.next();
            if !message.starts_with("STATUS=") {
                return message;
            }
        }
    }
}

fn exe() -> std::path::PathBuf {
    std::env::current_exe().unwrap()
}

/// The fds open in this process, without the one used to list them.
fn open_fds() -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    // The directory listing held one more fd, the highest at that moment.
    fds.retain(|fd| Path::new(&format!("/proc/self/fd/{fd}")).exists());
    fds
}

// ------------------------------------------------------------ the child side

/// `--serve [--next MODE] [--ready-timeout-ms N] [--careless] [--fds-out DIR]
/// [--hold-ms N] [--hold-start DIR] [--program PATH] [--bare] [--spare-fds N]
/// [--drain-ms N]`:
/// writes its pid to each connection. With `--next`, its upgrades start a
/// misbehaving child instead of another server. `--program` starts that
/// program instead of this one. With `--bare`, a generation started by a
/// parent installs no signal handler. `--spare-fds N` lowers the fd limit
/// and fills the table once ready, leaving `N` fds free.
fn serve(args: &[String], fds_at_start: &[i32]) -> ExitCode {
    let opt = |name: &str| {
        let at = args.iter().position(|a| a == name)?;
        args.get(at + 1).cloned()
    };
    let pid = std::process::id();
    if let Some(dir) = opt("--fds-out") {
        let list: Vec<String> = fds_at_start.iter().map(i32::to_string).collect();
        std::fs::write(Path::new(&dir).join(pid.to_string()), list.join(",")).unwrap();
    }
    // An fd opened without O_CLOEXEC, kept for the life of the process.
    let _careless = args.iter().any(|a| a == "--careless").then(|| {
        rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        )
        .unwrap()
    });
    let ms = |name: &str, default: u64| {
        Duration::from_millis(opt(name).map_or(default, |v| v.parse().unwrap()))
    };
    let hold = ms("--hold-ms", 0);

    let drain = ms("--drain-ms", TIMEOUT.as_millis() as u64);
    let shutdown = Shutdown::builder().drain_timeout(drain).build();
    let mut options = Options::default().ready_timeout(ms("--ready-timeout-ms", 20_000));
    if let Some(path) = opt("--pid-file") {
        options = options.pid_file(path);
    }
    if let Some(ms) = opt("--probation-ms") {
        options = options.probation(Duration::from_millis(ms.parse().unwrap()));
    }
    if let Some(mode) = opt("--next") {
        options = options.args([args[0].clone(), "--bad".into(), mode]);
    }
    if let Some(program) = opt("--program") {
        options = options.program(program);
    }
    let upgrader = match Upgrader::new(&shutdown, options) {
        Ok(upgrader) => upgrader,
        Err(e) => {
            println!("error {pid} {e}");
            return ExitCode::from(2);
        }
    };
    if let (Some(dir), true) = (opt("--hold-start"), upgrader.has_parent()) {
        // A slow start-up, before any signal handler is installed: the
        // driver sends signals now, then lets us go on.
        println!("start-held {pid}");
        let go = Path::new(&dir).join(format!("go-{pid}"));
        let deadline = Instant::now() + TIMEOUT;
        while !go.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if let Some(state) = opt("--state") {
        // Passed to every next generation, which reads it before ready.
        upgrader.pass_state(move || state.clone().into_bytes());
        if upgrader.has_parent() {
            let inherited = future::block_on(upgrader.inherited_state());
            let text = inherited.map_or("-".into(), |s| String::from_utf8_lossy(&s).into_owned());
            println!("inherited-state {pid} {text}");
        }
    }
    // An fd of a kind the typed methods do not cover, passed on by hand.
    let _extra = args.iter().any(|a| a == "--extra").then(|| {
        let socket = match upgrader.take_inherited("extra") {
            Some(fd) => {
                let kind = rustix::net::sockopt::socket_type(&fd).unwrap();
                println!("extra {pid} inherited {kind:?}");
                fd
            }
            None => rustix::net::socket(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::SEQPACKET,
                None,
            )
            .unwrap(),
        };
        upgrader.pass_on("extra", &socket).unwrap();
        // What a command this process starts sees of the activation
        // variables: nothing, once scrubbed.
        let mut command = Command::new("/bin/sh");
        command.args(["-c", "echo ${LISTEN_FDS:-none} ${LISTEN_PID:-none}"]);
        seamless::handoff::remove_activation_env(&mut command);
        let seen = command.output().unwrap().stdout;
        println!("child-env {pid} {}", String::from_utf8_lossy(&seen).trim());
        socket
    });
    let listener = upgrader.tcp_listener("main", "127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let tracker = Tracker::new(&shutdown);
    let mut listener = tracker.listen(Async::new(listener).unwrap());
    if args.iter().any(|a| a == "--handover") {
        upgrader.hand_over(&mut listener).unwrap();
    }
    let bare = upgrader.has_parent() && args.iter().any(|a| a == "--bare");
    let mut signals = (!bare).then(|| {
        SignalHandler::new(&shutdown)
            .unwrap()
            .upgrader(upgrader.clone())
    });
    upgrader.ready().unwrap();
    println!("ready {pid} {addr}");
    let _filler = opt("--spare-fds").map(|spare| fill_fd_table(spare.parse().unwrap()));

    let executor = smol::LocalExecutor::new();
    let accept = async {
        while let Ok(Some((mut conn, _))) = listener.accept().await {
            executor
                .spawn(async move {
                    let mut line = [0u8; 5];
                    let n = conn.read(&mut line).await.unwrap_or(0);
                    if line[..n].starts_with(b"hold") {
                        println!("holding {pid}");
                        async_io::Timer::after(hold).await;
                    }
                    let _ = conn.write_all(format!("{pid}\n").as_bytes()).await;
                })
                .detach();
        }
        future::pending::<()>().await
    };
    let events = async {
        let Some(signals) = signals.as_mut() else {
            return future::pending().await;
        };
        loop {
            println!("event {pid} {}", signals.next().await);
        }
    };
    let every = Duration::from_millis(50);
    let mut drain_status = seamless::systemd::DrainStatus::new(every);
    let status = tracker.report_drain(every, |counts| {
        let _ = drain_status.report(counts);
    });
    future::block_on(executor.run(future::or(
        future::or(
            future::or(accept, events),
            seamless::systemd::feed_watchdog(),
        ),
        // Ends once stopped, after a last report.
        status,
    )));
    let stats = upgrader.handover_stats();
    println!(
        "stopped {pid} handed_over={} fell_back={} unconfirmed={}",
        stats.handed_over, stats.fell_back, stats.unconfirmed
    );
    ExitCode::SUCCESS
}

/// Lowers the soft fd limit to 64 and opens `/dev/null` until the table is
/// full but for `spare` fds. The fds stay open as long as the result lives.
fn fill_fd_table(spare: usize) -> Vec<rustix::fd::OwnedFd> {
    let limit = rustix::process::Rlimit {
        current: Some(64),
        maximum: rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum,
    };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).unwrap();
    let mut fds = Vec::new();
    while let Ok(fd) = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        fds.push(fd);
        assert!(fds.len() < 64, "the fd limit is not enforced");
    }
    fds.truncate(fds.len() - spare);
    fds
}

/// `--bad MODE`: a next generation that never becomes ready.
fn bad_child(mode: &str) -> ExitCode {
    match mode {
        "exit" => ExitCode::from(3),
        "garbage" => {
            write_ready_pipe(b"hello\n");
            std::thread::sleep(TIMEOUT);
            ExitCode::SUCCESS
        }
        // Says it is ready, and keeps the handoff channel open without ever
        // reading it: a next generation that is stuck, or does not speak
        // the protocol.
        "no-read" => {
            write_ready_pipe(b"ready\n");
            println!("no-read {}", std::process::id());
            std::thread::sleep(TIMEOUT * 4);
            ExitCode::SUCCESS
        }
        // Takes what it was passed, says which names, and is ready.
        "ready" => {
            let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
            let upgrader = Upgrader::new(&Shutdown::new(), Options::default()).unwrap();
            upgrader.ready().unwrap();
            println!("child names {names}");
            ExitCode::SUCCESS
        }
        // Serves once ready; "crash" then crashes after 100 ms (exit
        // status 3).
        "crash" | "ready-serve" => {
            let upgrader = Upgrader::new(&Shutdown::new(), Options::default()).unwrap();
            let listener = upgrader.tcp_listener("main", "127.0.0.1:0").unwrap();
            // Non-blocking: the socket's mode is shared with the parent's
            // copy, which must not block.
            let listener = Async::new(listener).unwrap();
            upgrader.ready().unwrap();
            println!(
                "ready {} {}",
                std::process::id(),
                listener.get_ref().local_addr().unwrap()
            );
            let pid = std::process::id();
            future::block_on(future::or(
                async {
                    while let Ok((mut stream, _)) = listener.accept().await {
                        let _ = stream.write_all(format!("{pid}\n").as_bytes()).await;
                    }
                },
                async {
                    if mode == "crash" {
                        async_io::Timer::after(Duration::from_millis(100)).await;
                        std::process::exit(3);
                    }
                    future::pending::<()>().await
                },
            ));
            ExitCode::SUCCESS
        }
        // "hang": killed by the parent at its ready timeout (or a stop),
        // long before it would give up by itself.
        _ => {
            std::thread::sleep(TIMEOUT * 4);
            ExitCode::SUCCESS
        }
    }
}

/// Writes `message` on the readiness pipe by hand, as a child that does not
/// use the library would.
fn write_ready_pipe(message: &[u8]) {
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let index = names
        .split(':')
        .position(|n| n == "seamless-ready")
        .unwrap();
    let pipe = format!("/proc/self/fd/{}", 3 + index);
    std::fs::OpenOptions::new()
        .write(true)
        .open(pipe)
        .and_then(|mut p| p.write_all(message))
        .unwrap();
}

/// `--activated`: started as systemd would; gets its listener by name.
fn activated(fds_at_start: &[i32]) -> ExitCode {
    let shutdown = Shutdown::new();
    let upgrader = match Upgrader::new(&shutdown, Options::default()) {
        Ok(upgrader) => upgrader,
        Err(e) => {
            // What an application that carries on without the upgrader
            // would have: its open fds, and whether SIGTERM reaches it.
            let fds: Vec<String> = open_fds().iter().map(i32::to_string).collect();
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let has_term = |field: &str| {
                let mask = status
                    .lines()
                    .find_map(|line| line.strip_prefix(field))
                    .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
                    .unwrap();
                mask & (1 << (libc::SIGTERM - 1)) != 0
            };
            println!("error: {e}");
            println!(
                "after the error: fds {} sigterm_blocked {} sigterm_caught {}",
                fds.join(","),
                has_term("SigBlk:"),
                has_term("SigCgt:")
            );
            return ExitCode::from(2);
        }
    };
    let listener = match upgrader.tcp_listener("web", "127.0.0.1:0") {
        Ok(listener) => listener,
        Err(e) => {
            println!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let listed: Vec<String> = fds_at_start.iter().map(i32::to_string).collect();
    // Inherited only if the variables were meant for this process.
    let inherited = std::env::var("LISTEN_PID") == Ok(std::process::id().to_string());
    println!(
        "activated {} {} fds {}",
        listener.local_addr().unwrap(),
        if inherited { "inherited" } else { "fresh" },
        listed.join(",")
    );
    if !inherited {
        return ExitCode::SUCCESS;
    }
    let cloexec = rustix::io::fcntl_getfd(&listener).unwrap();
    assert!(
        cloexec.contains(rustix::io::FdFlags::CLOEXEC),
        "re-marked CLOEXEC"
    );
    if let Ok((mut stream, _)) = listener.accept() {
        let _ = stream.write_all(b"hi\n");
    }
    ExitCode::SUCCESS
}

/// `--ready-fails`: `ready()` fails (its pid file cannot be written), then is
/// called again.
fn ready_fails() -> ExitCode {
    let options = Options::default().pid_file("/nonexistent-seamless-dir/x.pid");
    let upgrader = Upgrader::new(&Shutdown::new(), options).unwrap();
    let said = |result: std::io::Result<()>| match result {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("error {e}"),
    };
    println!("first: {}", said(upgrader.ready()));
    println!("second: {}", said(upgrader.ready()));
    println!("is_ready {}", upgrader.is_ready());
    ExitCode::SUCCESS
}

/// `--bad-names`: gives names that cannot be passed on, then upgrades to a
/// child that says which names it got.
fn bad_names() -> ExitCode {
    let shutdown = Shutdown::new();
    let options = Options::default()
        .args([exe().into_os_string(), "--bad".into(), "ready".into()])
        .ready_timeout(TIMEOUT);
    let upgrader = Upgrader::new(&shutdown, options).unwrap();
    let extra = UdpSocket::bind("127.0.0.1:0").unwrap();
    let attempts: [(&str, std::io::Result<()>); 3] = [
        ("", upgrader.tcp_listener("", "127.0.0.1:0").map(drop)),
        ("admin:v2", upgrader.pass_on("admin:v2", &extra)),
        (
            "seamless-ready",
            upgrader
                .tcp_listener("seamless-ready", "127.0.0.1:0")
                .map(drop),
        ),
    ];
    for (name, result) in attempts {
        match result {
            Ok(()) => println!("name {name:?} accepted"),
            Err(e) => println!("name {name:?} refused: {e} ({:?})", e.kind()),
        }
    }
    let _listener = upgrader.tcp_listener("main", "127.0.0.1:0").unwrap();
    upgrader.ready().unwrap();
    match future::block_on(upgrader.upgrade()) {
        Ok(pid) => println!("upgraded to {pid}"),
        Err(e) => println!("upgrade failed: {e}"),
    }
    ExitCode::SUCCESS
}

// ------------------------------------------------------------------ spawning

/// The test hook that makes the next generation stop itself (SIGSTOP)
/// between clone and exec. Read by the parent at upgrade time, never passed
/// on, so it acts on the first upgrade of the generation started with it.
const STOP_BEFORE_EXEC: (&str, &str) = ("SEAMLESS_TEST_STOP_BEFORE_EXEC", "1");

fn the_parent_serves_while_its_child_is_stopped_before_exec() {
    let server = Server::start(&["--ready-timeout-ms", "10000"], &[STOP_BEFORE_EXEC]);
    server.sighup();
    let child = stopped_child_of(server.pid);
    // The executor does not wait for the child's exec: it answers.
    assert_eq!(ask_pid(server.addr), server.pid);
    // The ready timeout runs from the start of the upgrade, so it also ends
    // a child that never reaches exec; the child is killed and reaped.
    let line = server.expect(&format!("event {} upgrade failed", server.pid));
    assert!(line.contains("not ready within 10s"), "{line}");
    wait_gone(child);
    server.assert_still_serving_alone();
    server.stop();
}

fn a_signal_to_the_child_before_exec_is_the_childs() {
    for (signal, event) in [
        (Signal::TERM, "Term: draining"),
        (Signal::QUIT, "Quit: stopping now"),
    ] {
        let server = Server::start(&[], &[STOP_BEFORE_EXEC]);
        server.sighup();
        let child = stopped_child_of(server.pid);
        kill(child, signal);
        kill(child, Signal::CONT);
        // Held back until the new generation has its own handlers, then
        // acted on there; the parent only sees its successor become ready.
        server.expect(&format!("event {} generation {child} is ready", server.pid));
        server.expect(&format!("event {child} {event}"));
        for pid in [child, server.pid] {
            server.expect(&format!("stopped {pid}"));
            wait_gone(pid);
        }
        let name = event.split(':').next().unwrap();
        assert!(
            !server.seen(&format!("event {} {name}", server.pid)),
            "the parent acted on its child's {name}"
        );
    }
}

fn no_thread_of_a_new_generation_blocks_signals() {
    let server = Server::start(&[], &[]);
    server.sighup();
    let line = server.expect(&format!("event {} generation", server.pid));
    let child: u32 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    // Printed once ready() has returned.
    server.expect(&format!("ready {child} "));
    // A thread glibc is still creating has every signal blocked for a few
    // microseconds, until it takes its creator's mask: what must not happen
    // is a mask that stays.
    let deadline = Instant::now() + TIMEOUT;
    let masks = loop {
        let masks = thread_masks(child);
        if masks.len() >= 2 && masks.iter().all(|(_, blocked)| *blocked == 0) {
            break masks;
        }
        assert!(
            Instant::now() < deadline,
            "a thread of {child} keeps signals blocked: {masks:x?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(masks.len() >= 2, "the reactor's thread exists: {masks:?}");
    assert_eq!(ask_pid(server.addr), child);
    server.expect(&format!("stopped {}", server.pid));
    wait_gone(server.pid);
    kill(child, Signal::TERM);
    server.expect(&format!("stopped {child}"));
    wait_gone(child);
}

fn a_signal_held_during_start_up_acts_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--hold-start", dir.path().to_str().unwrap()], &[]);
    let let_go = |pid: u32| std::fs::write(dir.path().join(format!("go-{pid}")), "").unwrap();
    server.sighup();
    let starting = server.expect("start-held ");
    let second: u32 = starting.split_whitespace().nth(1).unwrap().parse().unwrap();
    kill(second, Signal::HUP);
    let_go(second);
    server.expect(&format!("event {second} Hup: starting the next generation"));
    // The third generation is held: a second HUP would be read by the
    // second generation's loop during this upgrade, and refused.
    let starting = server.expect("start-held ");
    let third: u32 = starting.split_whitespace().nth(1).unwrap().parse().unwrap();
    let_go(third);
    server.expect(&format!("event {second} generation {third} is ready"));
    for pid in [server.pid, second] {
        server.expect(&format!("stopped {pid}"));
        wait_gone(pid);
    }
    assert!(
        !server.seen(&format!("event {second} Hup")) && !server.seen("already in progress"),
        "the held SIGHUP was delivered twice"
    );
    // After the hand-over too: a second delivery would make it immediate,
    // read in the same pass as the first.
    kill(third, Signal::TERM);
    server.expect(&format!("event {third} Term: draining"));
    server.expect(&format!("stopped {third}"));
    assert!(
        !server.seen(&format!("event {third} Term: stopping now")),
        "a SIGTERM after start-up was delivered twice"
    );
    wait_gone(third);
}

fn a_start_up_signal_without_a_handler_takes_effect_at_ready() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &["--hold-start", dir.path().to_str().unwrap(), "--bare"],
        &[],
    );
    server.sighup();
    let starting = server.expect("start-held ");
    let second: u32 = starting.split_whitespace().nth(1).unwrap().parse().unwrap();
    kill(second, Signal::TERM);
    std::fs::write(dir.path().join(format!("go-{second}")), "").unwrap();
    // No handler ever takes it: SIGTERM's default action ends the new
    // generation in ready(), before it tells its parent.
    let line = server.expect(&format!("event {} upgrade failed", server.pid));
    assert!(line.contains("exited before it was ready"), "{line}");
    assert!(line.contains("SIGTERM"), "{line}");
    assert!(!server.seen(&format!("ready {second} ")));
    server.assert_still_serving_alone();
    server.stop();
}

fn a_failed_exec_names_the_program_and_the_errno() {
    let missing = "/nonexistent/seamless-next";
    let server = Server::start(&["--program", missing], &[]);
    server.sighup();
    let line = server.expect(&format!("event {} upgrade failed", server.pid));
    assert!(
        line.contains("could not start the next generation"),
        "{line}"
    );
    assert!(line.contains(missing), "names the program: {line}");
    assert!(line.contains("(os error 2)"), "gives the errno: {line}");
    server.assert_still_serving_alone();
    server.stop();
}

fn emfile_on_the_readiness_pipe_is_a_spawn_error() {
    // One fd left: enough to accept a connection, not for a pipe.
    let server = Server::start(&["--spare-fds", "1"], &[]);
    server.sighup();
    let line = server.expect(&format!("event {} upgrade failed", server.pid));
    assert!(
        line.contains("could not start the next generation"),
        "{line}"
    );
    assert!(line.contains("readiness pipe"), "says what failed: {line}");
    assert!(line.contains("(os error 24)"), "{line}");
    server.assert_still_serving_alone();
    server.stop();
}

impl Server {
    /// Whether a line containing `what` has been seen and not taken.
    fn seen(&self, what: &str) -> bool {
        while let Ok(line) = self.lines.try_recv() {
            self.unmatched.borrow_mut().push(line);
        }
        self.unmatched
            .borrow()
            .iter()
            .any(|line| line.contains(what))
    }
}

/// Waits until `parent` has a child in the stopped state, and returns it.
fn stopped_child_of(parent: u32) -> u32 {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        for child in children_of(parent) {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // The state follows the command name, which ends with ')'.
            let state = stat
                .rsplit(") ")
                .next()
                .and_then(|rest| rest.chars().next());
            if matches!(state, Some('T' | 't')) {
                return child;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no stopped child of {parent} within {TIMEOUT:?}");
}

/// The children of every thread of `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .flat_map(|task| {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            children
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Each thread of `pid` with its blocked-signal mask (`SigBlk`).
fn thread_masks(pid: u32) -> Vec<(u32, u64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("SigBlk:"))?;
            let mask = u64::from_str_radix(line["SigBlk:".len()..].trim(), 16).ok()?;
            Some((tid, mask))
        })
        .collect()
}

// ------------------------------------------------- faults during an upgrade

/// D3: a stop during an upgrade aborts it; the child is killed and reaped,
/// and nothing is left serving.
fn a_stop_during_an_upgrade_kills_the_child() {
    for signal in [Signal::TERM, Signal::QUIT] {
        let server = Server::start(&["--next", "hang", "--ready-timeout-ms", "60000"], &[]);
        server.sighup();
        server.expect(&format!("event {} Hup: starting", server.pid));
        let child = poll_child(server.pid);
        kill(server.pid, signal);
        let line = server.expect(&format!("event {} upgrade failed", server.pid));
        assert!(line.contains("a stop was asked for"), "{line}");
        server.expect(&format!("stopped {}", server.pid));
        wait_gone(server.pid);
        wait_gone(child);
        assert!(TcpStream::connect(server.addr).is_err(), "nothing serves");
    }
}

/// The child killed before exec, or after exec before it is ready: the
/// upgrade rolls back, the parent serves alone, no zombie, fds flat. Killed
/// just after it is ready: see `a_generation_dying_in_probation_is_replaced`.
fn killing_the_child_at_each_phase_leaves_one_generation() {
    // Before exec.
    let server = Server::start(&["--ready-timeout-ms", "60000"], &[STOP_BEFORE_EXEC]);
    let fds = fd_count(server.pid);
    server.sighup();
    let child = stopped_child_of(server.pid);
    kill(child, Signal::KILL);
    let line = server.expect(&format!("event {} upgrade failed", server.pid));
    assert!(line.contains("could not start"), "{line}");
    server.assert_still_serving_alone();
    assert_eq!(
        fd_count(server.pid),
        fds,
        "fds of the parent, before and after"
    );
    server.stop();

    // After exec, before ready.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--hold-start", dir.path().to_str().unwrap()], &[]);
    let fds = fd_count(server.pid);
    server.sighup();
    let starting = server.expect("start-held ");
    let child: u32 = starting.split_whitespace().nth(1).unwrap().parse().unwrap();
    kill(child, Signal::KILL);
    let line = server.expect(&format!("event {} upgrade failed", server.pid));
    assert!(line.contains("exited before it was ready"), "{line}");
    assert!(line.contains("signal: 9"), "{line}");
    server.assert_still_serving_alone();
    assert_eq!(
        fd_count(server.pid),
        fds,
        "fds of the parent, before and after"
    );
    server.stop();
}

/// The parent killed right after its child became ready: the child serves.
fn killing_the_parent_just_after_ready_leaves_the_child_serving() {
    let mut server = Server::start(&[], &[]);
    server.sighup();
    let line = server.expect(&format!("event {} generation", server.pid));
    let child: u32 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert_eq!(ask_pid(server.addr), child);
    kill(child, Signal::TERM);
    server.expect(&format!("stopped {child}"));
    wait_gone(child);
}

/// Probation: a new generation that dies after it became ready (it crashes
/// 100 ms in, or is killed at once) is replaced by one started from the old
/// generation's own executable; under load, no connection is refused
/// meanwhile, and the upgrade reports it.
fn a_generation_dying_in_probation_is_replaced() {
    for how in ["crash", "kill"] {
        let next = if how == "crash" {
            "crash"
        } else {
            "ready-serve"
        };
        let args = ["--next", next, "--probation-ms", "20000"];
        let server = Server::start(&args, &[]);
        let load = Probes::start(server.addr);
        server.sighup();
        let line = server.expect(&format!("event {} generation", server.pid));
        let dying: u32 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
        if how == "kill" {
            kill(dying, Signal::KILL);
        }
        let failed = server.expect(&format!("event {} upgrade failed", server.pid));
        assert!(
            failed.contains(&format!("({dying}) died within its probation")),
            "{failed}"
        );
        let status = if how == "crash" {
            "exit status: 3"
        } else {
            "signal: 9"
        };
        assert!(failed.contains(status), "{failed}");
        let replacement: u32 = failed
            .split("; generation ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no replacement pid in {failed:?}"));
        server.expect(&format!("ready {replacement} "));
        assert_eq!(ask_pid(server.addr), replacement, "the replacement serves");
        let probes = load.stop();
        assert_eq!(probes.refused, 0, "refused connections: {probes:?}");
        assert!(probes.answered > 0, "{probes:?}");
        server.expect(&format!("stopped {}", server.pid));
        wait_gone(server.pid);
        wait_gone(dying);
        kill(replacement, Signal::TERM);
        server.expect(&format!("stopped {replacement}"));
        wait_gone(replacement);
    }
}

/// A SIGTERM or SIGQUIT to the whole service (as systemd sends it) at a
/// pseudo-random point of 50 upgrades under load: the service always ends
/// up stopped, with no process and no zombie left.
fn stops_at_random_points_of_upgrades_leave_nothing() {
    const ROUNDS: u64 = 50;
    let mut seed: u64 = 0x5eed_1e55;
    for round in 0..ROUNDS {
        // xorshift: a fixed sequence, so a failure can be replayed.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_micros(seed % 8_000);
        let signal = if round % 2 == 0 {
            Signal::TERM
        } else {
            Signal::QUIT
        };
        let server = Server::start_in_own_group(&[]);
        let load = Probes::start(server.addr);
        server.sighup();
        // The fault's position: a pseudo-random time into the upgrade.
        std::thread::sleep(delay);
        let group = rustix::process::Pid::from_raw(server.pid as i32).unwrap();
        rustix::process::kill_process_group(group, signal).expect("signal the service");
        load.stop();
        // Every process of the service exits (and we reap it).
        let deadline = Instant::now() + TIMEOUT;
        while !group_is_empty(server.pid) {
            assert!(
                Instant::now() < deadline,
                "round {round} ({signal:?} after {delay:?}): the service is still running"
            );
            reap_any();
            std::thread::sleep(Duration::from_millis(5));
        }
        reap_any();
        if let Ok(mut stream) = TcpStream::connect(server.addr) {
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let _ = stream.write_all(b"pid\n");
            let mut reply = String::new();
            let _ = stream.read_to_string(&mut reply);
            let local = stream.local_addr().ok();
            panic!(
                "round {round} ({signal:?} after {delay:?}): {} still serves: {reply:?} (from {local:?})",
                server.addr
            );
        }
    }
}

/// Connects again and again, asking for the pid, counting refusals.
struct Probes {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<ProbeCounts>,
}

#[derive(Debug, Default)]
struct ProbeCounts {
    answered: usize,
    refused: usize,
    /// Accepted, then closed unanswered: a crashing generation's.
    cut: usize,
}

impl Probes {
    fn start(addr: SocketAddr) -> Probes {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut counts = ProbeCounts::default();
            // Bounded in count as well as by the stop flag.
            for _ in 0..100_000 {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                match TcpStream::connect(addr) {
                    Err(_) => counts.refused += 1,
                    Ok(mut stream) => {
                        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                        let mut reply = String::new();
                        let _ = stream.write_all(b"pid\n");
                        match stream.read_to_string(&mut reply) {
                            Ok(_) if !reply.is_empty() => counts.answered += 1,
                            _ => counts.cut += 1,
                        }
                    }
                }
            }
            counts
        });
        Probes { stop, thread }
    }

    fn stop(self) -> ProbeCounts {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// Waits until `parent` has a child, and returns it.
fn poll_child(parent: u32) -> u32 {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if let Some(&child) = children_of(parent).first() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{parent} has no child after {TIMEOUT:?}");
}

/// How many fds `pid` has open.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Whether no process is left in process group `pgid`. A zombie counts:
/// a leader shows as one while its other threads still exit and still hold
/// its fds; only once reaped (we are every generation's subreaper) is it
/// gone.
fn group_is_empty(pgid: u32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    !procs.flatten().any(|entry| {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // After the command name: state, ppid, pgrp.
        let mut fields = stat.rsplit(") ").next().unwrap_or("").split_whitespace();
        let pgrp = fields.nth(2).and_then(|p| p.parse::<u32>().ok());
        pgrp == Some(pgid)
    })
}

/// Reaps every exited child (we are the subreaper of every generation).
fn reap_any() {
    while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {}
}

/// The live handoff at the deadline: a next generation that says it is
/// ready but never reads its handoff channel never says whether it took
/// the connection sent to it. The old generation stops at its deadline,
/// counts it unconfirmed and only drops its copy, never shuts it down: the
/// successor could still take it. The connection closes, cleanly, with the
/// successor that holds it.
fn a_successor_that_never_reads_its_channel_gets_no_connection() {
    let server = Server::start(
        &[
            "--handover",
            "--next",
            "no-read",
            "--probation-ms",
            "300",
            "--drain-ms",
            "1000",
        ],
        &[],
    );
    // Idle: connected, nothing sent yet.
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.set_read_timeout(Some(TIMEOUT)).unwrap();
    server.sighup();
    let line = server.expect("no-read ");
    let child: u32 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let stopped = server.expect(&format!("stopped {}", server.pid));
    assert!(
        stopped.contains("handed_over=0 fell_back=0 unconfirmed=1"),
        "{stopped}"
    );
    wait_gone(server.pid);
    // The old generation is gone without a FIN: the connection is open.
    idle.set_nonblocking(true).unwrap();
    let read = idle.read(&mut [0; 16]);
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "still open, not {read:?}"
    );
    idle.set_nonblocking(false).unwrap();
    kill(child, Signal::KILL);
    wait_gone(child);
    let mut rest = Vec::new();
    let read = idle.read_to_end(&mut rest);
    assert!(matches!(read, Ok(0)), "a clean EOF, not {read:?}");
    assert_eq!(idle.take_error().unwrap().map(|e| e.kind()), None);
}

/// The application state passed with `pass_state` arrives before the next
/// generation is ready; an fd of another kind passed with `pass_on` is
/// taken back with `take_inherited`; a command a generation starts sees no
/// activation variables once they are scrubbed.
fn state_and_extra_fds_reach_the_next_generation() {
    let server = Server::start(&["--state", "cache-v1", "--extra"], &[]);
    let first = server.expect(&format!("child-env {}", server.pid));
    assert!(first.ends_with("none none"), "{first}");
    server.sighup();
    let line = server.expect(&format!("event {} generation", server.pid));
    let child: u32 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    server.expect(&format!("inherited-state {child} cache-v1"));
    // SOCK_SEQPACKET is 5 on Linux.
    server.expect(&format!("extra {child} inherited SocketType(5)"));
    let env = server.expect(&format!("child-env {child}"));
    assert!(
        env.ends_with("none none"),
        "a scrubbed command sees none: {env}"
    );
    server.expect(&format!("stopped {}", server.pid));
    wait_gone(server.pid);
    kill(child, Signal::TERM);
    server.expect(&format!("stopped {child}"));
    wait_gone(child);
}

/// systemd names the main process in `WATCHDOG_PID`. After a hot restart
/// the new generation is the main process: its environment names it, and
/// it feeds the watchdog (the old generation is gone by then).
fn the_next_generation_feeds_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // `exec` keeps the shell's pid, which systemd would have put there.
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" --serve --probation-ms 0")
        .arg(exe())
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "100000")
        .stdout(Stdio::piped());
    let server = Server::run(command);
    let mut messages = Messages::new(socket);
    assert_eq!(messages.next(), "READY=1");
    messages.wait_watchdog();

    server.sighup();
    let line = server.expect(&format!("event {} generation", server.pid));
    let child: u32 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    server.expect(&format!("stopped {}", server.pid));
    wait_gone(server.pid);

    let environ = std::fs::read(format!("/proc/{child}/environ")).unwrap();
    let own = format!("WATCHDOG_PID={child}");
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|entry| entry == own.as_bytes()),
        "{own} in the new generation's environment"
    );
    // More pings than the old generation could have left queued when it
    // exited (it pinged every 50 ms): they come from the new one.
    let deadline = Instant::now() + TIMEOUT;
    let mut pings = 0;
    while pings < 5 {
        let left = deadline.saturating_duration_since(Instant::now());
        match messages.received.recv_timeout(left) {
            Ok(message) if message == "WATCHDOG=1" => pings += 1,
            Ok(_) => {}
            Err(_) => panic!("{pings} watchdog pings after the old generation exited"),
        }
    }
    kill(child, Signal::TERM);
    wait_gone(child);
}

/// A bad inherited fd is an error naming it; the fds listed after it are
/// closed, not left open for later children, and the start-up signals a
/// seamless parent blocked do not stay blocked: an application that
/// carries on without the upgrader still stops on SIGTERM.
fn a_bad_inherited_fd_leaks_nothing() {
    let not_a_socket = std::fs::File::open("/dev/null").unwrap();
    let (_read, write) = rustix::pipe::pipe().unwrap();
    let (first, second) = (not_a_socket.as_raw_fd(), write.as_raw_fd());
    let mut command = Command::new("/bin/sh");
    command
        .args([
            "-c",
            "LISTEN_PID=$$ exec \"$0\" --activated",
            exe().to_str().unwrap(),
        ])
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "web:seamless-ready")
        .stdout(Stdio::piped());
    // SAFETY: fcntl, dup2, sigemptyset, sigaddset and pthread_sigmask are
    // async-signal-safe and allocate nothing.
    unsafe {
        command.pre_exec(move || {
            // Out of the way first, so that placing one cannot clobber the
            // other; then at 3 and 4, as a parent passes them, with
            // SIGTERM blocked, as a seamless parent starts its child.
            let high = [first, second].map(|fd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10));
            for (target, fd) in [(3, high[0]), (4, high[1])] {
                if fd < 0 || libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let out = command.output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("inherited fd 3 (named \"web\") is not a socket"),
        "{out}"
    );
    let after = out
        .lines()
        .find_map(|line| line.strip_prefix("after the error: "))
        .unwrap_or_else(|| panic!("{out}"));
    let fds: Vec<&str> = after
        .strip_prefix("fds ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .split(',')
        .collect();
    assert!(!fds.contains(&"3") && !fds.contains(&"4"), "{out}");
    assert!(
        after.ends_with("sigterm_blocked false sigterm_caught false"),
        "SIGTERM has its default action: {out}"
    );
}

/// Once the new generation serves, a stop of the old one (here SIGQUIT
/// while the new one is in its probation) ends the old one only: the new
/// one serves on, and nothing is left of the old one.
fn a_stop_in_probation_ends_only_the_old_generation() {
    let server = Server::start(&["--probation-ms", "60000"], &[]);
    server.sighup();
    let line = server.expect(&format!("event {} generation", server.pid));
    let child: u32 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    kill(server.pid, Signal::QUIT);
    server.expect(&format!("stopped {}", server.pid));
    wait_gone(server.pid);
    assert_eq!(ask_pid(server.addr), child, "the new generation serves");
    assert!(procs::alive(child));
    kill(child, Signal::TERM);
    wait_gone(child);
}

/// An old generation asked to stop (here SIGTERM, as systemd sends it to
/// the whole service) does not start a replacement when its successor dies
/// in probation: nothing is started again behind a stop.
fn a_stopping_generation_starts_no_replacement() {
    let args = ["--next", "ready-serve", "--probation-ms", "60000"];
    let server = Server::start(&args, &[]);
    server.sighup();
    let line = server.expect(&format!("event {} generation", server.pid));
    let dying: u32 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    kill(server.pid, Signal::TERM);
    server.expect(&format!("event {} Term: draining", server.pid));
    kill(dying, Signal::KILL);
    let failed = server.expect(&format!("event {} upgrade failed", server.pid));
    assert!(
        failed.contains(&format!("({dying}) died within its probation")),
        "{failed}"
    );
    assert!(failed.contains("no replacement"), "{failed}");
    server.expect(&format!("stopped {}", server.pid));
    wait_gone(server.pid);
    wait_gone(dying);
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "nothing serves after the stop"
    );
}
