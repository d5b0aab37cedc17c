//! The event lines a server under test writes for the harness, and their
//! parser: the one definition of the format.
//!
//! A server started with `--events` writes one line per event on stderr,
//! beside its human-readable log lines (which start with `[pid]` and are
//! free to change):
//!
//! ```text
//! event=upgraded pid=4687 child=4693
//! event=draining pid=4687 total=32 busy=3 idle=29 new=0 closing=0
//! event=upgrade-failed pid=4693 reason="the next generation exited before it was ready: exit status: 3"
//! ```
//!
//! - A line is `event=<kind>`, then `pid=<pid>` (the process that writes it),
//!   then the kind's fields in a fixed order, each `key=value`, separated by
//!   one space.
//! - A value is written bare when it is not empty and has no space, `"`, `=`,
//!   `\` or control character; otherwise it is quoted, with `\\`, `\"`, `\n`,
//!   `\r`, `\t` and `\u{hex}` escapes.
//! - The parser takes the fields by name: it ignores fields it does not know
//!   (a server may say more) and refuses a line that lacks one it needs.
//!
//! Each line is written with a single `write(2)` ([`emit`]), so lines of
//! generations sharing one pipe never interleave. Every kind and its fields
//! are the variants of [`Event`].

use std::fmt;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::str::FromStr;

/// What starts every event line.
pub const PREFIX: &str = "event=";

/// A server's connection counts, as its tracker reports them while draining.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every connection still open.
    pub total: usize,
    /// A request in progress.
    pub busy: usize,
    /// Waiting for the next request.
    pub idle: usize,
    /// Accepted, no byte read yet.
    pub new: usize,
    /// Being closed by the drain.
    pub closing: usize,
}

impl fmt::Display for Counts {
    /// `8 connections (busy 4, idle 4, new 0, closing 0)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections (busy {}, idle {}, new {}, closing {})",
            self.total, self.busy, self.idle, self.new, self.closing
        )
    }
}

/// One event of one server process. `pid` is always the process that
/// writes the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `listening`: it holds its listener (inherited from its parent, or
    /// bound afresh).
    Listening {
        /// The writer.
        pid: u32,
        /// The listener's address.
        addr: SocketAddr,
        /// Inherited from a previous generation (or systemd).
        inherited: bool,
    },
    /// `ready`: it said it is ready; its parent, if any, now drains.
    Ready {
        /// The writer.
        pid: u32,
        /// Milliseconds from its start.
        ms: u64,
    },
    /// `upgrading`: a signal started an upgrade.
    Upgrading {
        /// The writer.
        pid: u32,
        /// The signal, as the server names it.
        signal: String,
    },
    /// `upgraded`: the next generation is ready; this one drains.
    Upgraded {
        /// The writer, the old generation.
        pid: u32,
        /// The new generation.
        child: u32,
    },
    /// `upgrade-failed`: an upgrade failed or was refused; this one serves
    /// on.
    UpgradeFailed {
        /// The writer.
        pid: u32,
        /// Why.
        reason: String,
    },
    /// `stopping`: a signal asked it to stop.
    Stopping {
        /// The writer.
        pid: u32,
        /// The signal, as the server names it.
        signal: String,
        /// At once, rather than by draining.
        immediate: bool,
    },
    /// `draining`: drain progress. The first one comes when the drain
    /// starts (accepting has stopped), then one on each change.
    Draining {
        /// The writer.
        pid: u32,
        /// Its connections now.
        counts: Counts,
    },
    /// `drained`: the drain is over.
    Drained {
        /// The writer.
        pid: u32,
        /// Connections open when the drain started.
        connections: usize,
        /// Milliseconds the drain took.
        ms: u64,
        /// Connections still open at the deadline (cut).
        left: usize,
        /// Connections handed, alive, to the next generation.
        handed_over: u64,
        /// Connections that were to move on but were closed instead.
        fell_back: u64,
    },
    /// `stopped`: it is about to exit.
    Stopped {
        /// The writer.
        pid: u32,
    },
    /// `accept-failed`: an accept failed (it retries).
    AcceptFailed {
        /// The writer.
        pid: u32,
        /// The error.
        reason: String,
    },
    /// `accepted`: a connection was accepted (servers that log connections
    /// only).
    Accepted {
        /// The writer.
        pid: u32,
        /// The client.
        peer: SocketAddr,
    },
    /// `request`: a request reached the handler (servers that log
    /// connections only).
    Request {
        /// The writer.
        pid: u32,
        /// The client.
        peer: SocketAddr,
        /// The request's method.
        method: String,
        /// The request's target.
        target: String,
    },
    /// `closed`: a connection ended (servers that log connections only).
    Closed {
        /// The writer.
        pid: u32,
        /// The client.
        peer: SocketAddr,
        /// Why it ended, if by an error.
        error: Option<String>,
    },
    /// `notice`: anything else worth saying, as text.
    Notice {
        /// The writer.
        pid: u32,
        /// What.
        text: String,
    },
}

impl Event {
    /// The process that wrote it.
    pub fn pid(&self) -> u32 {
        match self {
            Event::Listening { pid, .. }
            | Event::Ready { pid, .. }
            | Event::Upgrading { pid, .. }
            | Event::Upgraded { pid, .. }
            | Event::UpgradeFailed { pid, .. }
            | Event::Stopping { pid, .. }
            | Event::Draining { pid, .. }
            | Event::Drained { pid, .. }
            | Event::Stopped { pid }
            | Event::AcceptFailed { pid, .. }
            | Event::Accepted { pid, .. }
            | Event::Request { pid, .. }
            | Event::Closed { pid, .. }
            | Event::Notice { pid, .. } => *pid,
        }
    }

    /// The kind, as written after `event=`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Listening { .. } => "listening",
            Event::Ready { .. } => "ready",
            Event::Upgrading { .. } => "upgrading",
            Event::Upgraded { .. } => "upgraded",
            Event::UpgradeFailed { .. } => "upgrade-failed",
            Event::Stopping { .. } => "stopping",
            Event::Draining { .. } => "draining",
            Event::Drained { .. } => "drained",
            Event::Stopped { .. } => "stopped",
            Event::AcceptFailed { .. } => "accept-failed",
            Event::Accepted { .. } => "accepted",
            Event::Request { .. } => "request",
            Event::Closed { .. } => "closed",
            Event::Notice { .. } => "notice",
        }
    }

    /// Parses `line` if it is an event line (it starts with [`PREFIX`]);
    /// `None` for any other line, such as a human-readable log line.
    pub fn from_line(line: &str) -> Option<Result<Event, ParseError>> {
        line.starts_with(PREFIX).then(|| line.parse())
    }

    /// The fields after `pid`, in the order they are written.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let text = |s: &String| s.clone();
        match self {
            Event::Listening {
                addr, inherited, ..
            } => vec![
                ("addr", addr.to_string()),
                ("inherited", inherited.to_string()),
            ],
            Event::Ready { ms, .. } => vec![("ms", ms.to_string())],
            Event::Upgrading { signal, .. } => vec![("signal", text(signal))],
            Event::Upgraded { child, .. } => vec![("child", child.to_string())],
            Event::UpgradeFailed { reason, .. } | Event::AcceptFailed { reason, .. } => {
                vec![("reason", text(reason))]
            }
            Event::Stopping {
                signal, immediate, ..
            } => vec![
                ("signal", text(signal)),
                ("immediate", immediate.to_string()),
            ],
            Event::Draining { counts, .. } => vec![
                ("total", counts.total.to_string()),
                ("busy", counts.busy.to_string()),
                ("idle", counts.idle.to_string()),
                ("new", counts.new.to_string()),
                ("closing", counts.closing.to_string()),
            ],
            Event::Drained {
                connections,
                ms,
                left,
                handed_over,
                fell_back,
                ..
            } => vec![
                ("connections", connections.to_string()),
                ("ms", ms.to_string()),
                ("left", left.to_string()),
                ("handed_over", handed_over.to_string()),
                ("fell_back", fell_back.to_string()),
            ],
            Event::Stopped { .. } => Vec::new(),
            Event::Accepted { peer, .. } => vec![("peer", peer.to_string())],
            Event::Request {
                peer,
                method,
                target,
                ..
            } => vec![
                ("peer", peer.to_string()),
                ("method", text(method)),
                ("target", text(target)),
            ],
            Event::Closed { peer, error, .. } => {
                let mut fields = vec![("peer", peer.to_string())];
                fields.extend(error.as_ref().map(|e| ("error", e.clone())));
                fields
            }
            Event::Notice { text: t, .. } => vec![("text", text(t))],
        }
    }
}

impl fmt::Display for Event {
    /// The event line, without its newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{} pid={}", self.kind(), self.pid())?;
        for (key, value) in self.fields() {
            write!(f, " {key}=")?;
            write_value(f, &value)?;
        }
        Ok(())
    }
}

/// Writes `event` on stderr as one line, in a single `write`.
pub fn emit(event: &Event) {
    let line = format!("{event}\n");
    let _ = io::stderr().write_all(line.as_bytes());
}

fn bare(value: &str) -> bool {
    !value.is_empty()
        && !value
            .chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c == '\\' || c.is_control())
}

fn write_value(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    if bare(value) {
        return out.write_str(value);
    }
    out.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if c.is_control() => write!(out, "\\u{{{:x}}}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

/// Why a line is not a valid event line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad event line: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

fn error<T>(message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(message.into()))
}

/// Splits a line into its `key=value` fields, unquoting values.
fn split_fields(line: &str) -> Result<Vec<(String, String)>, ParseError> {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let (mut key, mut has_value) = (String::new(), false);
        for c in chars.by_ref() {
            match c {
                '=' => {
                    has_value = true;
                    break;
                }
                ' ' | '"' | '\\' => return error(format!("{c:?} in a field name")),
                c => key.push(c),
            }
        }
        if key.is_empty() {
            return error("a field without a name");
        }
        if !has_value {
            return error(format!("{key} without a value"));
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return error(format!("unterminated quote in {key}")),
                    Some('"') => break,
                    Some('\\') => value.push(unescape(&mut chars, &key)?),
                    Some(c) => value.push(c),
                }
            }
            if !matches!(chars.peek(), None | Some(' ')) {
                return error(format!("text after the quoted value of {key}"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                if c == '"' || c == '=' || c == '\\' {
                    return error(format!("{c:?} in the bare value of {key}"));
                }
                value.push(c);
                chars.next();
            }
            if value.is_empty() {
                return error(format!("empty value of {key}"));
            }
        }
        if fields.iter().any(|(k, _)| *k == key) {
            return error(format!("{key} given twice"));
        }
        fields.push((key, value));
        match chars.next() {
            None => return Ok(fields),
            Some(' ') if !matches!(chars.peek(), None | Some(' ')) => {}
            Some(_) => return error("an extra space"),
        }
    }
}

fn unescape(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    key: &str,
) -> Result<char, ParseError> {
    Ok(match chars.next() {
        Some('"') => '"',
        Some('\\') => '\\',
        Some('n') => '\n',
        Some('r') => '\r',
        Some('t') => '\t',
        Some('u') => {
            if chars.next() != Some('{') {
                return error(format!("bad \\u escape in {key}"));
            }
            let mut hex = String::new();
            loop {
                match chars.next() {
                    Some('}') => break,
                    Some(c) if c.is_ascii_hexdigit() && hex.len() < 6 => hex.push(c),
                    _ => return error(format!("bad \\u escape in {key}")),
                }
            }
            u32::from_str_radix(&hex, 16)
                .ok()
                .and_then(char::from_u32)
                .map_or_else(|| error(format!("bad \\u escape in {key}")), Ok)?
        }
        other => return error(format!("bad escape {other:?} in {key}")),
    })
}

/// The fields of one line, taken by name.
struct Fields(Vec<(String, String)>);

impl Fields {
    fn text(&self, key: &str) -> Result<String, ParseError> {
        match self.0.iter().find(|(k, _)| k == key) {
            Some((_, value)) => Ok(value.clone()),
            None => error(format!("no {key}")),
        }
    }

    fn optional(&self, key: &str) -> Option<String> {
        self.text(key).ok()
    }

    fn get<T: FromStr>(&self, key: &str) -> Result<T, ParseError> {
        let value = self.text(key)?;
        value
            .parse()
            .map_or_else(|_| error(format!("{key}={value:?} is not valid")), Ok)
    }
}

impl FromStr for Event {
    type Err = ParseError;

    fn from_str(line: &str) -> Result<Event, ParseError> {
        if !line.starts_with(PREFIX) {
            return error(format!("does not start with {PREFIX:?}"));
        }
        let fields = Fields(split_fields(line)?);
        let kind = fields.text("event")?;
        let pid = fields.get("pid")?;
        let event = match kind.as_str() {
            "listening" => Event::Listening {
                pid,
                addr: fields.get("addr")?,
                inherited: fields.get("inherited")?,
            },
            "ready" => Event::Ready {
                pid,
                ms: fields.get("ms")?,
            },
            "upgrading" => Event::Upgrading {
                pid,
                signal: fields.text("signal")?,
            },
            "upgraded" => Event::Upgraded {
                pid,
                child: fields.get("child")?,
            },
            "upgrade-failed" => Event::UpgradeFailed {
                pid,
                reason: fields.text("reason")?,
            },
            "stopping" => Event::Stopping {
                pid,
                signal: fields.text("signal")?,
                immediate: fields.get("immediate")?,
            },
            "draining" => Event::Draining {
                pid,
                counts: Counts {
                    total: fields.get("total")?,
                    busy: fields.get("busy")?,
                    idle: fields.get("idle")?,
                    new: fields.get("new")?,
                    closing: fields.get("closing")?,
                },
            },
            "drained" => Event::Drained {
                pid,
                connections: fields.get("connections")?,
                ms: fields.get("ms")?,
                left: fields.get("left")?,
                // Absent from a server that hands nothing over.
                handed_over: fields.get("handed_over").unwrap_or(0),
                fell_back: fields.get("fell_back").unwrap_or(0),
            },
            "stopped" => Event::Stopped { pid },
            "accept-failed" => Event::AcceptFailed {
                pid,
                reason: fields.text("reason")?,
            },
            "accepted" => Event::Accepted {
                pid,
                peer: fields.get("peer")?,
            },
            "request" => Event::Request {
                pid,
                peer: fields.get("peer")?,
                method: fields.text("method")?,
                target: fields.text("target")?,
            },
            "closed" => Event::Closed {
                pid,
                peer: fields.get("peer")?,
                error: fields.optional("error"),
            },
            "notice" => Event::Notice {
                pid,
                text: fields.text("text")?,
            },
            other => return error(format!("unknown kind {other:?}")),
        };
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Event> {
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        vec![
            Event::Listening {
                pid: 1,
                addr: "127.0.0.1:8080".parse().unwrap(),
                inherited: true,
            },
            Event::Ready { pid: 2, ms: 3 },
            Event::Upgrading {
                pid: 3,
                signal: "Hup".into(),
            },
            Event::Upgraded { pid: 4, child: 5 },
            Event::UpgradeFailed {
                pid: 6,
                reason: "the next generation exited: \"exit status: 3\"\\ok\nnext\ttab\u{7}".into(),
            },
            Event::Stopping {
                pid: 7,
                signal: "Term".into(),
                immediate: false,
            },
            Event::Draining {
                pid: 8,
                counts: Counts {
                    total: 8,
                    busy: 4,
                    idle: 3,
                    new: 1,
                    closing: 0,
                },
            },
            Event::Drained {
                pid: 9,
                connections: 32,
                ms: 163,
                left: 0,
                handed_over: 16,
                fell_back: 1,
            },
            Event::Stopped { pid: 10 },
            Event::AcceptFailed {
                pid: 11,
                reason: "Too many open files (os error 24)".into(),
            },
            Event::Accepted { pid: 12, peer },
            Event::Request {
                pid: 13,
                peer,
                method: "GET".into(),
                target: "/sleep?ms=600".into(),
            },
            Event::Closed {
                pid: 14,
                peer,
                error: None,
            },
            Event::Closed {
                pid: 15,
                peer,
                error: Some(String::new()),
            },
            Event::Notice {
                pid: 16,
                text: "=".into(),
            },
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for event in every_kind() {
            let line = event.to_string();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(Event::from_line(&line), Some(Ok(event.clone())), "{line}");
        }
    }

    #[test]
    fn the_documented_lines_parse() {
        assert_eq!(
            "event=upgraded pid=4687 child=4693".parse(),
            Ok(Event::Upgraded {
                pid: 4687,
                child: 4693
            })
        );
        let line = "event=upgrade-failed pid=4693 reason=\"exited: exit status: 3\"";
        assert_eq!(
            line.parse(),
            Ok(Event::UpgradeFailed {
                pid: 4693,
                reason: "exited: exit status: 3".into()
            })
        );
        assert_eq!(
            Event::Draining {
                pid: 1,
                counts: Counts {
                    total: 8,
                    busy: 4,
                    idle: 4,
                    new: 0,
                    closing: 0
                }
            }
            .to_string(),
            "event=draining pid=1 total=8 busy=4 idle=4 new=0 closing=0"
        );
    }

    #[test]
    fn unknown_fields_are_ignored_in_any_order() {
        assert_eq!(
            "event=upgraded child=5 extra=\"x y\" pid=4".parse(),
            Ok(Event::Upgraded { pid: 4, child: 5 })
        );
    }

    #[test]
    fn a_log_line_is_not_an_event() {
        assert_eq!(Event::from_line("[4687] generation 4693 is ready"), None);
        assert_eq!(Event::from_line(""), None);
    }

    #[test]
    fn malformed_lines_are_errors_naming_what_is_wrong() {
        for (line, names) in [
            ("event=upgraded pid=4", "no child"),
            ("event=upgraded pid=x child=5", "pid"),
            ("event=upgraded pid=-1 child=5", "pid"),
            ("event=teleported pid=4", "unknown kind"),
            ("event=upgraded pid=4 child=5 child=6", "twice"),
            ("event=notice pid=4 text=\"open", "unterminated"),
            ("event=notice pid=4 text=\"a\"b", "after the quoted"),
            ("event=notice pid=4 text=\"\\q\"", "bad escape"),
            ("event=notice pid=4 text=\"\\u{110000}\"", "\\u"),
            ("event=notice pid=4 text=", "empty value"),
            ("event=notice pid=4 text=a\"b", "bare value"),
            ("event=stopped pid=4 ", "extra space"),
            ("event=stopped pid=4  x=1", "extra space"),
            ("event=stopped pid", "pid without a value"),
            ("event=stopped =4", "without a name"),
            (
                "event=stopping pid=4 signal=Term immediate=maybe",
                "immediate",
            ),
            ("event=listening pid=4 addr=nowhere inherited=false", "addr"),
        ] {
            let error = line.parse::<Event>().unwrap_err().to_string();
            assert!(error.contains(names), "{line:?}: {error}");
        }
    }

    #[test]
    fn values_that_need_it_are_quoted() {
        let event = Event::Notice {
            pid: 1,
            text: "a b".into(),
        };
        assert_eq!(event.to_string(), "event=notice pid=1 text=\"a b\"");
        let event = Event::Notice {
            pid: 1,
            text: String::new(),
        };
        assert_eq!(event.to_string(), "event=notice pid=1 text=\"\"");
        assert_eq!(event.to_string().parse(), Ok(event));
    }
}
