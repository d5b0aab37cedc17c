//! Hot restarts under load, then a graceful shutdown, written once: the
//! demo prints its [`Report`], the restart tests assert on it.
//!
//! [`RestartUnderLoad::run`]:
//!
//! 1. starts the server ([`Launch`]), which counts the first generation's
//!    fds before any connection;
//! 2. starts the load ([`crate::load`]) and waits for it to get going;
//! 3. hot-restarts the server with SIGHUP, [`restarts`] times. Each restart
//!    waits, on the server's events, for the old generation to say its
//!    successor is ready, for the new one to be named by the pid file and to
//!    answer, and for the old one to start draining (it no longer accepts);
//!    only then does it count [`progress`] more requests completed, which the
//!    load can only have got through the new generation and the connections
//!    the old one still drains;
//! 4. stops the load, waits for every old generation to exit, and counts the
//!    last generation's fds once the load's connections are closed;
//! 5. sends SIGTERM to the last generation with requests in flight and idle
//!    keep-alive connections, and records what each client saw, the drain,
//!    the exit, and any process left.
//!
//! Nothing panics on the way: what goes wrong is recorded and the run goes
//! on to its end, so that [`Report::problems`] says everything, and no
//! process is left behind (the server's generations are killed when the
//! run returns).
//!
//! [`restarts`]: RestartUnderLoad::restarts
//! [`progress`]: RestartUnderLoad::progress

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::client;
use crate::events::{Counts, Event};
use crate::load::{self, millis, p50, Summary};
use crate::procs::{alive, connection_fds, fd_count, poll, signal, tcp_unread, wait_gone};
use crate::server::{Launch, Seen, Server, UpgradeFailure, LONG};

/// What to run.
#[derive(Debug, Clone)]
pub struct RestartUnderLoad {
    /// The server.
    pub launch: Launch,
    /// Hot restarts, in a row.
    pub restarts: usize,
    /// Load clients that reuse their connection.
    pub keepalive_clients: usize,
    /// Load clients that open a new connection per request.
    pub fresh_clients: usize,
    /// One request in this many (per client) is `/sleep?ms=sleep_ms`; 0 for
    /// none.
    pub sleep_one_in: u64,
    /// How long those requests take. Longer than the server's idle grace
    /// (250 ms by default), a request cut when the grace ends fails.
    pub sleep_ms: u64,
    /// A request that takes longer fails.
    pub request_timeout: Duration,
    /// Requests completed before the first restart.
    pub warmup: u64,
    /// Requests the load must complete after each restart, counted from
    /// when the old generation has started draining.
    pub progress: u64,
    /// Spreads the restarts over this long: restart `i` of `n` at `i / (n +
    /// 1)` of it from the start of the load, which runs for all of it.
    /// `None`: each restart as soon as the one before is done, and the load
    /// stops after the last.
    pub spread_over: Option<Duration>,
    /// After each restart, waits up to this long for the old generation's
    /// drain to end before going on, so that [`Restart::drained`] is known
    /// when [`Progress::Restarted`] is reported. `None`: drains overlap the
    /// next restarts; their ends are collected at the end of the run.
    pub wait_drained: Option<Duration>,
    /// Requests in flight (`/sleep?ms=final_sleep_ms`) at the final SIGTERM.
    pub final_in_flight: usize,
    /// Idle keep-alive connections at the final SIGTERM.
    pub final_idle: usize,
    /// How long the requests in flight at the final SIGTERM take.
    pub final_sleep_ms: u64,
}

impl RestartUnderLoad {
    /// 10 restarts back to back; 32 clients, half keep-alive, one request in
    /// 8 a 600 ms `/sleep`; 200 requests of warm-up and 100 after each
    /// restart; 4 requests in flight (1 s) and 4 idle connections at the
    /// final SIGTERM.
    pub fn new(launch: Launch) -> RestartUnderLoad {
        RestartUnderLoad {
            launch,
            restarts: 10,
            keepalive_clients: 16,
            fresh_clients: 16,
            sleep_one_in: 8,
            sleep_ms: 600,
            request_timeout: Duration::from_secs(10),
            warmup: 200,
            progress: 100,
            spread_over: None,
            wait_drained: None,
            final_in_flight: 4,
            final_idle: 4,
            final_sleep_ms: 1000,
        }
    }

    /// Runs it, telling `progress` as it goes.
    ///
    /// # Errors
    ///
    /// Only if the server could not be started or never became ready;
    /// everything after that is in the report.
    pub fn run(&self, progress: &mut dyn FnMut(Progress<'_>)) -> io::Result<Report> {
        let server = self.launch.start()?;
        Ok(Run {
            scenario: self,
            server: &server,
            progress,
            incidents: Vec::new(),
        }
        .run())
    }
}

/// What happened so far, as it happens.
#[derive(Debug)]
pub enum Progress<'a> {
    /// The first generation serves; the load is about to start.
    Started {
        /// Its pid.
        pid: u32,
        /// Where it listens.
        addr: SocketAddr,
        /// Its open fds.
        fds: usize,
    },
    /// A restart is done.
    Restarted(&'a Restart),
    /// Restart `index` (from 1) failed.
    RestartFailed {
        /// Which.
        index: usize,
        /// Why.
        why: &'a str,
    },
    /// The final SIGTERM is about to be sent.
    ShuttingDown {
        /// To this generation.
        pid: u32,
    },
}

/// One hot restart.
#[derive(Debug, Clone)]
pub struct Restart {
    /// Which, from 1.
    pub index: usize,
    /// The generation that got the SIGHUP.
    pub old: u32,
    /// Its successor.
    pub new: u32,
    /// When the SIGHUP was sent.
    pub sighup: Instant,
    /// When the SIGHUP was sent, from the start of the load.
    pub at: Duration,
    /// From the SIGHUP until the pid file named the new generation and it
    /// answered.
    pub serving_after: Duration,
    /// How the old generation's drain ended, if it said so.
    pub drained: Option<Drained>,
}

/// How a drain ended, as the server said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections open when it started.
    pub connections: usize,
    /// How long it took, in milliseconds.
    pub ms: u64,
    /// Connections still open at the deadline, and cut.
    pub left: usize,
    /// Connections handed, alive, to the next generation.
    pub handed_over: u64,
    /// Connections that were to move on but were closed instead.
    pub fell_back: u64,
}

impl Drained {
    fn of(event: &Event) -> Option<Drained> {
        match *event {
            Event::Drained {
                connections,
                ms,
                left,
                handed_over,
                fell_back,
                ..
            } => Some(Drained {
                connections,
                ms,
                left,
                handed_over,
                fell_back,
            }),
            _ => None,
        }
    }
}

/// What a new connection found once the final drain had started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LateConnection {
    /// Refused: nobody listens any more.
    Refused,
    /// Accepted: the listener was still open.
    Accepted,
    /// Something else.
    Failed(String),
}

impl fmt::Display for LateConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LateConnection::Refused => f.write_str("refused, as it should be"),
            LateConnection::Accepted => f.write_str("accepted (the listener was still open)"),
            LateConnection::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// The final graceful shutdown.
#[derive(Debug, Clone)]
pub struct FinalShutdown {
    /// The generation that got the SIGTERM.
    pub pid: u32,
    /// Requests in flight at the SIGTERM.
    pub in_flight: usize,
    /// Idle keep-alive connections at the SIGTERM.
    pub idle: usize,
    /// How long the requests in flight took.
    pub sleep_ms: u64,
    /// The drain's first report.
    pub first_report: Option<Counts>,
    /// What a new connection found once the drain had started.
    pub late_connection: LateConnection,
    /// Requests in flight answered 200 by `pid`, with `connection: close`,
    /// then a clean EOF.
    pub answered: usize,
    /// Idle connections closed cleanly (EOF, no reset).
    pub idle_closed: usize,
    /// What went wrong for each client that did not end well.
    pub client_errors: Vec<String>,
    /// From the SIGTERM until it exited.
    pub exited_after: Option<Duration>,
    /// How its drain ended.
    pub drained: Option<Drained>,
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Where the server listened.
    pub addr: SocketAddr,
    /// Restarts asked for.
    pub restarts_asked: usize,
    /// Restarts done, in order.
    pub restarts: Vec<Restart>,
    /// What went wrong during the run: a restart that failed, the load not
    /// going on, the pid file naming another generation.
    pub incidents: Vec<String>,
    /// The serving generations in order: the first, then each new one.
    pub generations: Vec<u32>,
    /// Every process the server turned into (see
    /// [`Seen::pids`](crate::server::Seen::pids)).
    pub pids_seen: BTreeSet<u32>,
    /// The load, request by request.
    pub load: Summary,
    /// How long the load's `/sleep` requests took.
    pub sleep_ms: u64,
    /// `/sleep` requests answered while a SIGHUP was sent (in flight across
    /// it).
    pub sleep_spanning_sighup: usize,
    /// The first generation's open fds when it said it was ready.
    pub fds_first: usize,
    /// Fds the first generation inherited from whatever started this
    /// process (not passed on to the next generations; see
    /// [`fd_count`]).
    pub fds_inherited: usize,
    /// The last generation's open fds, once the load's connections closed.
    pub fds_last: usize,
    /// TCP connections the last generation still had then.
    pub connections_last: usize,
    /// Old generations still running after [`LONG`].
    pub lingering: Vec<u32>,
    /// The final graceful shutdown.
    pub shutdown: FinalShutdown,
    /// Every process holding the server's stdout and stderr has exited.
    pub pipes_closed: bool,
    /// Generations still running at the end.
    pub processes_left: Vec<u32>,
    /// Lines that looked like events but did not parse.
    pub bad_event_lines: Vec<String>,
    /// The server's last log lines.
    pub log_tail: String,
}

impl Report {
    /// SIGHUP to serving, per restart, sorted.
    pub fn serving_after(&self) -> Vec<Duration> {
        let mut took: Vec<Duration> = self.restarts.iter().map(|r| r.serving_after).collect();
        took.sort_unstable();
        took
    }

    /// Asserts, one by one with a message naming what went wrong, that a
    /// run of `restarts` hot restarts lost nothing: no failed, refused or
    /// cut request, every `/sleep` answered and some in flight across a
    /// SIGHUP, a new pid at every restart, no generation or process or fd
    /// left, and a clean final shutdown. What the restart tests assert.
    ///
    /// # Panics
    ///
    /// At the first thing that was not as it should be.
    pub fn assert_lost_nothing(&self, restarts: usize) {
        let summary = &self.load;
        let log = &self.log_tail;
        assert!(self.fds_first > 0, "cannot read the first generation's fds");
        assert!(self.incidents.is_empty(), "{:#?}\n{log}", self.incidents);
        assert_eq!(
            summary.failed_with(load::FailKind::Refused),
            0,
            "refused connections\n{log}"
        );
        assert_eq!(
            summary.failed_total(),
            0,
            "failed requests: {}\n{log}",
            summary.failed_by_kind()
        );
        assert_eq!(summary.sent, summary.completed);
        assert!(summary.sleep_sent > 0);
        assert_eq!(
            summary.sleep_ok, summary.sleep_sent,
            "every /sleep gets a 200"
        );
        assert!(
            self.sleep_spanning_sighup > 0,
            "no /sleep request was in flight across a SIGHUP"
        );
        assert_eq!(self.restarts.len(), restarts, "restarts done");
        let distinct: BTreeSet<u32> = self.generations.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            restarts + 1,
            "every restart changed the pid: {:?}",
            self.generations
        );
        assert!(
            summary.generations.len() >= restarts,
            "the load saw {} generations",
            summary.generations.len()
        );
        assert!(
            summary.generations.is_subset(&distinct),
            "answered by unknown generations: {:?}",
            summary.generations
        );
        for restart in &self.restarts {
            let drained = restart.drained.expect("every old generation drains");
            assert_eq!(drained.left, 0, "{} cut connections", restart.old);
        }
        assert!(
            self.lingering.is_empty(),
            "old generations still alive: {:?}",
            self.lingering
        );
        assert_eq!(
            self.fds_last, self.fds_first,
            "fds of the last generation vs the first ({} TCP connections open)",
            self.connections_last
        );
        let end = &self.shutdown;
        assert_eq!(
            (end.answered, end.idle_closed),
            (end.in_flight, end.idle),
            "at the final SIGTERM, requests in flight answered and idle connections \
             closed cleanly: {:#?}",
            end.client_errors
        );
        assert!(
            end.exited_after.is_some(),
            "the last generation did not exit after SIGTERM"
        );
        assert_eq!(
            end.drained.map(|d| d.left),
            Some(0),
            "its drain cut nothing"
        );
        assert!(
            self.pipes_closed,
            "a process still holds the server's stdout/stderr"
        );
        assert!(
            self.processes_left.is_empty(),
            "processes left behind: {:?}",
            self.processes_left
        );
        assert_eq!(self.problems(), Vec::<String>::new());
    }

    /// Everything that was not as it should be: empty when no request
    /// failed, no connection was refused or cut, every restart and the final
    /// shutdown went as they should, and nothing was left behind.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.incidents.clone();
        let mut problem = |p: String| problems.push(p);
        if self.restarts.len() != self.restarts_asked {
            problem(format!(
                "{} restarts done of {}",
                self.restarts.len(),
                self.restarts_asked
            ));
        }
        if self.load.failed_total() > 0 {
            problem(format!("failed requests: {}", self.load.failed_by_kind()));
        }
        if self.load.sleep_ok != self.load.sleep_sent {
            problem(format!(
                "/sleep requests: {} of {} answered",
                self.load.sleep_ok, self.load.sleep_sent
            ));
        }
        for restart in &self.restarts {
            match restart.drained {
                Some(drained) if drained.left > 0 => problem(format!(
                    "{} cut {} connections at its drain deadline",
                    restart.old, drained.left
                )),
                Some(_) => {}
                None => problem(format!("{} never said its drain ended", restart.old)),
            }
        }
        if !self.lingering.is_empty() {
            problem(format!("old generations still alive: {:?}", self.lingering));
        }
        if self.fds_last != self.fds_first {
            problem(format!(
                "fds of the last generation {} vs the first {} ({} TCP connections open)",
                self.fds_last, self.fds_first, self.connections_last
            ));
        }
        let end = &self.shutdown;
        if end.answered != end.in_flight {
            problem(format!(
                "final shutdown: {} of {} requests in flight answered",
                end.answered, end.in_flight
            ));
        }
        if end.idle_closed != end.idle {
            problem(format!(
                "final shutdown: {} of {} idle connections closed cleanly",
                end.idle_closed, end.idle
            ));
        }
        problems.extend(
            end.client_errors
                .iter()
                .map(|e| format!("final shutdown: {e}")),
        );
        let mut problem = |p: String| problems.push(p);
        if end.exited_after.is_none() {
            problem(format!("{} did not exit after SIGTERM", end.pid));
        }
        match end.drained {
            Some(drained) if drained.left > 0 => problem(format!(
                "{} cut {} connections at its drain deadline",
                end.pid, drained.left
            )),
            Some(_) => {}
            None => problem(format!("{} never said its drain ended", end.pid)),
        }
        if !self.pipes_closed {
            problem("a process still holds the server's stdout or stderr".into());
        }
        if !self.processes_left.is_empty() {
            problem(format!("processes left: {:?}", self.processes_left));
        }
        for line in &self.bad_event_lines {
            problem(line.clone());
        }
        problems
    }
}

impl fmt::Display for Report {
    /// The figures, in a few lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.load)?;
        let took = self.serving_after();
        writeln!(
            f,
            "restarts {} of {}, {} generations, SIGHUP to serving median {} max {}; \
             /sleep?ms={} in flight across a SIGHUP {}",
            self.restarts.len(),
            self.restarts_asked,
            self.generations.len(),
            millis(p50(&took)),
            millis(took.last().copied()),
            self.sleep_ms,
            self.sleep_spanning_sighup
        )?;
        let drains: Vec<Drained> = self.restarts.iter().filter_map(|r| r.drained).collect();
        writeln!(
            f,
            "drains reported {}: up to {} connections, longest {} ms, {} connections cut",
            drains.len(),
            drains.iter().map(|d| d.connections).max().unwrap_or(0),
            drains.iter().map(|d| d.ms).max().unwrap_or(0),
            drains.iter().map(|d| d.left).sum::<usize>()
        )?;
        writeln!(
            f,
            "fds first {} (+{} inherited from the environment) last {}; old generations lingering {}",
            self.fds_first,
            self.fds_inherited,
            self.fds_last,
            self.lingering.len()
        )?;
        let end = &self.shutdown;
        write!(
            f,
            "final SIGTERM with {} in flight and {} idle: {} answered, {} closed cleanly, \
             exited after {}, {} processes left",
            end.in_flight,
            end.idle,
            end.answered,
            end.idle_closed,
            millis(end.exited_after),
            self.processes_left.len()
        )
    }
}

/// One run in progress.
struct Run<'a> {
    scenario: &'a RestartUnderLoad,
    server: &'a Server,
    progress: &'a mut dyn FnMut(Progress<'_>),
    incidents: Vec<String>,
}

impl Run<'_> {
    fn run(mut self) -> Report {
        let (scenario, server) = (self.scenario, self.server);
        let first = server.first_pid();
        let (fds_first, fds_inherited) = server.first_fds();
        (self.progress)(Progress::Started {
            pid: first,
            addr: server.addr(),
            fds: fds_first,
        });

        let mut config = load::Config::new(server.addr());
        config.keepalive_clients = scenario.keepalive_clients;
        config.fresh_clients = scenario.fresh_clients;
        config.sleep_one_in = scenario.sleep_one_in;
        config.sleep_ms = scenario.sleep_ms;
        config.request_timeout = scenario.request_timeout;
        config.max_duration = scenario.spread_over.unwrap_or_default() + Duration::from_secs(180);
        let load = load::Load::start(config);
        let started = Instant::now();

        let mut generations = vec![first];
        let mut restarts = Vec::new();
        if poll(LONG, || (load.completed() >= scenario.warmup).then_some(())).is_none() {
            self.incidents.push("the load never got going".into());
        } else {
            self.restart_all(&load, started, &mut generations, &mut restarts);
        }
        if let Some(over) = scenario.spread_over {
            std::thread::sleep(over.saturating_sub(started.elapsed()));
        }
        let summary = load.stop();

        // Old generations exit once drained.
        let last = *generations.last().expect("the first generation");
        let lingering: Vec<u32> = generations[..generations.len() - 1]
            .iter()
            .copied()
            .filter(|pid| !wait_gone(*pid, LONG))
            .collect();
        // Their drains' ends, if not waited for: each wrote it before it
        // exited, but it may not have been read yet.
        let ended = |seen: &Seen, old: u32| {
            seen.events
                .iter()
                .any(|e| matches!(e, Event::Drained { pid, .. } if *pid == old))
        };
        server.wait(LONG, |seen| {
            restarts
                .iter()
                .all(|r: &Restart| ended(seen, r.old))
                .then_some(())
        });
        for restart in &mut restarts {
            if restart.drained.is_none() {
                let old = restart.old;
                restart.drained = self.drained(0, old, Duration::ZERO);
            }
        }
        // The last generation's fds, once the load's connections are closed.
        let fds_last = poll(LONG, || {
            let (n, _) = fd_count(last);
            (n == fds_first && connection_fds(last) == 0).then_some(n)
        })
        .unwrap_or_else(|| fd_count(last).0);
        let connections_last = connection_fds(last);

        let shutdown = self.shut_down(last);
        let pipes_closed = server.wait_pipes_closed(LONG);
        let sighups: Vec<Instant> = restarts.iter().map(|r: &Restart| r.sighup).collect();
        let sleep_spanning_sighup = summary
            .records
            .iter()
            .filter(|r| r.sleep && r.ok())
            .filter(|r| {
                let from = summary.started + r.start;
                let to = from + r.latency;
                sighups.iter().any(|t| from <= *t && *t <= to)
            })
            .count();
        Report {
            addr: server.addr(),
            restarts_asked: scenario.restarts,
            restarts,
            incidents: self.incidents,
            generations,
            pids_seen: server.pids_seen(),
            load: summary,
            sleep_ms: scenario.sleep_ms,
            sleep_spanning_sighup,
            fds_first,
            fds_inherited,
            fds_last,
            connections_last,
            lingering,
            shutdown,
            pipes_closed,
            processes_left: server.alive(),
            bad_event_lines: server.bad_lines(),
            log_tail: server.log_tail(60),
        }
    }

    fn restart_all(
        &mut self,
        load: &load::Load,
        started: Instant,
        generations: &mut Vec<u32>,
        restarts: &mut Vec<Restart>,
    ) {
        let (scenario, server) = (self.scenario, self.server);
        for index in 1..=scenario.restarts {
            if let Some(over) = scenario.spread_over {
                let at = over.mul_f64(index as f64 / (scenario.restarts + 1) as f64);
                std::thread::sleep(at.saturating_sub(started.elapsed()));
            }
            let old = *generations.last().expect("the first generation");
            let named = server.pid();
            if named != Some(old) {
                self.incidents.push(format!(
                    "restart {index}: the pid file names {named:?}, not the serving generation {old}"
                ));
            }
            let mark = server.events_seen();
            let sighup = Instant::now();
            if let Err(e) = signal(old, Signal::HUP) {
                self.fail_restart(index, format!("SIGHUP to {old}: {e}"));
                return;
            }
            let new = match server.wait_upgrade(mark, old, LONG) {
                Ok(new) => new,
                // The old generation serves on: the next restart asks it
                // again.
                Err(failed @ UpgradeFailure::Failed(_)) => {
                    self.fail_restart(index, failed.to_string());
                    continue;
                }
                Err(silent @ UpgradeFailure::Silent(_)) => {
                    self.fail_restart(index, silent.to_string());
                    return;
                }
            };
            if !server.wait_answers(new, LONG) {
                self.fail_restart(index, format!("generation {new} never answered"));
                return;
            }
            let serving_after = sighup.elapsed();
            if generations.contains(&new) {
                self.incidents
                    .push(format!("restart {index}: pid {new} was seen before"));
            }
            generations.push(new);
            // The old generation has stopped accepting once its drain has
            // started. Until then it may serve the whole load on a busy
            // machine, and the load's progress would prove nothing about the
            // new one.
            let draining = server.wait_event(mark, LONG, |event| {
                matches!(event, Event::Draining { pid, .. } | Event::Drained { pid, .. }
                    if *pid == old)
            });
            if draining.is_none() {
                self.fail_restart(index, format!("{old} never started draining"));
                return;
            }
            // Each client gets at most one more answer from the draining
            // generation (with `connection: close`), so most of these come
            // from the new one.
            let before = load.completed();
            let goal = before + scenario.progress;
            if poll(LONG, || (load.completed() >= goal).then_some(())).is_none() {
                self.fail_restart(index, "the load stalled".into());
                return;
            }
            let drained = scenario
                .wait_drained
                .and_then(|timeout| self.drained(mark, old, timeout));
            let restart = Restart {
                index,
                old,
                new,
                sighup,
                at: sighup - started,
                serving_after,
                drained,
            };
            (self.progress)(Progress::Restarted(&restart));
            restarts.push(restart);
        }
    }

    fn fail_restart(&mut self, index: usize, why: String) {
        (self.progress)(Progress::RestartFailed { index, why: &why });
        self.incidents.push(format!("restart {index}: {why}"));
    }

    /// How `pid`'s drain ended, if it says so within `timeout`.
    fn drained(&self, since: usize, pid: u32, timeout: Duration) -> Option<Drained> {
        let event = self.server.wait_event(
            since,
            timeout,
            |event| matches!(event, Event::Drained { pid: p, .. } if *p == pid),
        )?;
        Drained::of(&event)
    }

    /// SIGTERM to `pid` with requests in flight and idle connections.
    fn shut_down(&mut self, pid: u32) -> FinalShutdown {
        let (scenario, server) = (self.scenario, self.server);
        let addr = server.addr();
        let mut end = FinalShutdown {
            pid,
            in_flight: scenario.final_in_flight,
            idle: scenario.final_idle,
            sleep_ms: scenario.final_sleep_ms,
            first_report: None,
            late_connection: LateConnection::Failed("not tried".into()),
            answered: 0,
            idle_closed: 0,
            client_errors: Vec::new(),
            exited_after: None,
            drained: None,
        };
        // Idle keep-alive connections: one request answered, then quiet.
        let mut idle = Vec::new();
        for i in 0..scenario.final_idle {
            match idle_connection(addr) {
                Ok(stream) => idle.push(stream),
                Err(e) => end.client_errors.push(format!("idle connection {i}: {e}")),
            }
        }
        // In flight: a long request each, in the server's hands before the
        // SIGTERM.
        let path = format!("/sleep?ms={}", scenario.final_sleep_ms);
        let mut in_flight = Vec::new();
        for i in 0..scenario.final_in_flight {
            let sent = client::connect(addr).and_then(|mut stream| {
                client::send_get(&mut stream, &path, false)?;
                Ok(stream)
            });
            match sent {
                Ok(stream) => in_flight.push(stream),
                Err(e) => end
                    .client_errors
                    .push(format!("request in flight {i}: {e}")),
            }
        }
        // The server has read a request once nothing is left unread on its
        // end of the connection.
        let read = poll(LONG, || {
            let unread = tcp_unread(addr);
            in_flight
                .iter()
                .all(|stream| {
                    let local = stream.local_addr().ok();
                    local.and_then(|local| unread.get(&local)) == Some(&0)
                })
                .then_some(())
        });
        if read.is_none() {
            end.client_errors
                .push("the server never read the requests in flight".into());
        }

        (self.progress)(Progress::ShuttingDown { pid });
        let mark = server.events_seen();
        let sent_at = Instant::now();
        if let Err(e) = signal(pid, Signal::TERM) {
            end.client_errors.push(format!("SIGTERM to {pid}: {e}"));
        }
        end.first_report = server
            .wait_event(
                mark,
                LONG,
                |e| matches!(e, Event::Draining { pid: p, .. } if *p == pid),
            )
            .and_then(|event| match event {
                Event::Draining { counts, .. } => Some(counts),
                _ => None,
            });
        // A new connection now finds nobody listening.
        end.late_connection = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => LateConnection::Refused,
            Err(e) => LateConnection::Failed(e.to_string()),
            Ok(_) => LateConnection::Accepted,
        };

        for (i, mut stream) in idle.into_iter().enumerate() {
            match client::read_to_eof(&mut stream) {
                Ok(data) if data.is_empty() => end.idle_closed += 1,
                Ok(data) => end.client_errors.push(format!(
                    "idle connection {i}: {} unexpected bytes",
                    data.len()
                )),
                Err(e) => end.client_errors.push(format!("idle connection {i}: {e}")),
            }
        }
        for (i, mut stream) in in_flight.into_iter().enumerate() {
            match answered_then_eof(&mut stream, pid) {
                Ok(()) => end.answered += 1,
                Err(e) => end
                    .client_errors
                    .push(format!("request in flight {i}: {e}")),
            }
        }

        end.exited_after = poll(LONG, || (!alive(pid)).then(|| sent_at.elapsed()));
        end.drained = self.drained(mark, pid, LONG);
        end
    }
}

/// A keep-alive connection that has had one request answered.
fn idle_connection(addr: SocketAddr) -> io::Result<TcpStream> {
    let mut stream = client::connect(addr)?;
    client::send_get(&mut stream, "/", false)?;
    let response = client::read_response(&mut stream)?;
    if response.status != 200 || response.body != b"ok\n" || response.says_close() {
        return Err(io::Error::other(format!(
            "unexpected answer before the shutdown: {response:?}"
        )));
    }
    Ok(stream)
}

/// The request in flight on `stream` is answered 200 by `pid`, with
/// `connection: close`, then the connection ends with a clean EOF.
fn answered_then_eof(stream: &mut TcpStream, pid: u32) -> Result<(), String> {
    let response = client::read_response(stream).map_err(|e| e.to_string())?;
    if response.status != 200 || response.body != b"ok\n" {
        return Err(format!("unexpected answer {response:?}"));
    }
    if response.generation() != Some(pid) {
        return Err(format!(
            "answered by {:?}, not {pid}",
            response.generation()
        ));
    }
    if !response.says_close() {
        return Err("answered without `connection: close`".into());
    }
    match client::read_to_eof(stream)? {
        rest if rest.is_empty() => Ok(()),
        rest => Err(format!("{} bytes after the answer", rest.len())),
    }
}
