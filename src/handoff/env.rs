//! The systemd socket-activation variables: `LISTEN_PID`, `LISTEN_FDS` and
//! `LISTEN_FDNAMES`.
//!
//! A parent (systemd, or the previous generation of this service) passes
//! open fds at 3, 4, ... and describes them in three variables:
//!
//! - `LISTEN_PID`: the pid the variables are meant for. A process that
//!   inherited them by accident (a grandchild) must not take the fds: as
//!   systemd's `sd_listen_fds()` does, variables naming another process, or
//!   no process, are ignored ([`Activation::NotOurs`]).
//! - `LISTEN_FDS`: how many fds there are.
//! - `LISTEN_FDNAMES`: optional, one name per fd, separated by `:`.
//!
//! Parsing and rendering are pure: they take the raw bytes of the variables
//! and return what they say, or an [`EnvError`] naming what was wrong. They
//! never read the environment and never touch an fd, so they can be tested
//! and fuzzed on their own. The values arrive from another process, so
//! malformed input is expected and never panics. [`remove_activation_env`]
//! keeps the variables out of the commands an application starts itself.
//!
//! The syntax is stricter than systemd's own `sd_listen_fds()`, which uses
//! `strtol` and so also takes leading spaces and a `+` sign: numbers here are
//! plain ASCII decimal digits, nothing else. Names follow systemd's rule
//! (`fdname_is_valid`): printable ASCII, no `:`, at most 255 bytes.

use std::fmt;
use std::os::fd::RawFd;

/// The first inherited fd. Fds 0, 1 and 2 are stdio.
pub const SD_LISTEN_FDS_START: RawFd = 3;

/// The most fds `LISTEN_FDS` may announce.
///
/// A real service listens on a handful of sockets; a larger count is a
/// corrupt or hostile value, and taking it at its word would mean claiming
/// (and later closing) thousands of fds this process never got.
pub const MAX_LISTEN_FDS: usize = 1024;

/// The longest name `LISTEN_FDNAMES` may carry for one fd, as in systemd.
pub const MAX_FD_NAME_LEN: usize = 255;

/// The name of an fd that was passed without one, as in systemd.
pub const UNKNOWN_NAME: &str = "unknown";

/// The variables the socket-activation protocol sets. The spawner sets its
/// own for the next generation and never passes ours on.
pub(crate) const ACTIVATION_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// What the variables say about this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activation {
    /// The fds passed to this process; empty when `LISTEN_FDS` is unset.
    Fds(Vec<ListenFd>),
    /// `LISTEN_FDS` is set, but `LISTEN_PID` is unset or names another
    /// process: the variables were inherited by accident and the fds are not
    /// ours. Ignored, as systemd's `sd_listen_fds()` does.
    NotOurs {
        /// The pid in `LISTEN_PID`, if it is set.
        listen_pid: Option<u32>,
    },
}

/// One inherited fd as the variables describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenFd {
    /// The fd number: [`SD_LISTEN_FDS_START`] plus the fd's index.
    pub fd: RawFd,
    /// Its name from `LISTEN_FDNAMES`, or [`UNKNOWN_NAME`] if it has none.
    pub name: String,
}

/// Why the socket-activation variables could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvError {
    /// A variable is not valid UTF-8.
    NotUtf8 {
        /// The variable's name.
        var: &'static str,
        /// Its raw value.
        value: Vec<u8>,
    },
    /// A number is empty or has something other than ASCII digits in it
    /// (a sign, a space, a letter).
    NotANumber {
        /// The variable's name.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// `LISTEN_FDS` (or the number of names to render) is more than
    /// 1024 (no real service listens on more).
    TooMany {
        /// The count as given.
        value: String,
    },
    /// `LISTEN_PID` is a number but cannot be a process id (zero, or larger
    /// than any `pid_t`).
    PidOutOfRange {
        /// Its value.
        value: String,
    },
    /// `LISTEN_FDNAMES` does not have one name per fd.
    NamesMismatch {
        /// The number of fds in `LISTEN_FDS`.
        fds: usize,
        /// The number of names in `LISTEN_FDNAMES`.
        names: usize,
    },
    /// A name cannot be carried in `LISTEN_FDNAMES`.
    BadName {
        /// The name's position, from 0.
        index: usize,
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvError::NotUtf8 { var, value } => {
                write!(f, "{var}=\"{}\" is not valid UTF-8", value.escape_ascii())
            }
            EnvError::NotANumber { var, value } => {
                write!(f, "{var}={value:?} is not a number")
            }
            EnvError::TooMany { value } => write!(
                f,
                "LISTEN_FDS={value:?} is more than the {MAX_LISTEN_FDS} fds accepted"
            ),
            EnvError::PidOutOfRange { value } => {
                write!(f, "LISTEN_PID={value:?} is not a valid process id")
            }
            EnvError::NamesMismatch { fds, names } => {
                write!(f, "LISTEN_FDNAMES has {names} name(s) but LISTEN_FDS={fds}")
            }
            EnvError::BadName {
                index,
                name,
                reason,
            } => write!(f, "fd name {index} ({name:?}) is not valid: {reason}"),
        }
    }
}

impl std::error::Error for EnvError {}

/// Reads the socket-activation variables, given their raw values.
///
/// `own_pid` is this process's pid ([`std::process::id`]). When
/// `LISTEN_PID` is unset or names another process the variables are not
/// ours ([`Activation::NotOurs`]), as in `sd_listen_fds()`; a malformed
/// `LISTEN_PID` is an error. The fds are numbered from
/// [`SD_LISTEN_FDS_START`] in order, and each gets its name from
/// `LISTEN_FDNAMES`, or [`UNKNOWN_NAME`] when that is unset or the name is
/// empty (systemd's default for unnamed fds).
///
/// `LISTEN_FDS` unset means nothing was passed: the result is empty whatever
/// the other two say. `LISTEN_FDS=0` is valid and also gives an empty list.
/// Leading zeros in numbers are accepted (`"007"` is 7).
///
/// # Errors
///
/// - [`EnvError::NotUtf8`] if a variable is not UTF-8.
/// - [`EnvError::NotANumber`] if `LISTEN_FDS` or `LISTEN_PID` is not plain
///   ASCII decimal (empty, signed, spaces, letters).
/// - [`EnvError::TooMany`] if `LISTEN_FDS` is above [`MAX_LISTEN_FDS`].
/// - [`EnvError::PidOutOfRange`] if `LISTEN_PID` is zero or too large to be
///   a pid.
/// - [`EnvError::NamesMismatch`] if `LISTEN_FDNAMES` does not have exactly
///   one name per fd.
/// - [`EnvError::BadName`] if a name has a control character, a non-ASCII
///   character, or more than [`MAX_FD_NAME_LEN`] bytes.
pub fn parse_listen_env(
    listen_pid: Option<&[u8]>,
    listen_fds: Option<&[u8]>,
    listen_fdnames: Option<&[u8]>,
    own_pid: u32,
) -> Result<Activation, EnvError> {
    let Some(listen_fds) = listen_fds else {
        return Ok(Activation::Fds(Vec::new()));
    };
    let Some(listen_pid) = listen_pid else {
        return Ok(Activation::NotOurs { listen_pid: None });
    };
    let pid = parse_pid(utf8("LISTEN_PID", listen_pid)?)?;
    if pid != own_pid {
        return Ok(Activation::NotOurs {
            listen_pid: Some(pid),
        });
    }
    let count = parse_count(utf8("LISTEN_FDS", listen_fds)?)?;

    let names: Vec<&str> = match listen_fdnames {
        None => vec![""; count],
        Some(raw) => {
            let raw = utf8("LISTEN_FDNAMES", raw)?;
            // An empty value is no names at all when there are no fds, and
            // one empty name when there is one.
            if raw.is_empty() && count == 0 {
                Vec::new()
            } else {
                raw.split(':').collect()
            }
        }
    };
    if names.len() != count {
        return Err(EnvError::NamesMismatch {
            fds: count,
            names: names.len(),
        });
    }

    let mut fds = Vec::with_capacity(count);
    for (index, name) in names.into_iter().enumerate() {
        check_name(index, name)?;
        let name = if name.is_empty() { UNKNOWN_NAME } else { name };
        fds.push(ListenFd {
            // Cannot overflow: `index < MAX_LISTEN_FDS`.
            fd: SD_LISTEN_FDS_START + index as RawFd,
            name: name.to_owned(),
        });
    }
    Ok(Activation::Fds(fds))
}

/// Renders `LISTEN_FDS` and `LISTEN_FDNAMES` for a child that gets one fd per
/// name, in order, from [`SD_LISTEN_FDS_START`]. `LISTEN_PID` is not here:
/// the child's pid is only known after fork, so the spawner fills it in.
///
/// What this renders, [`parse_listen_env`] reads back to the same names.
///
/// # Errors
///
/// - [`EnvError::TooMany`] for more than [`MAX_LISTEN_FDS`] names.
/// - [`EnvError::BadName`] for a name that could not be read back as itself:
///   empty (it would read as [`UNKNOWN_NAME`]), containing `:`, a control
///   or non-ASCII character, or longer than [`MAX_FD_NAME_LEN`] bytes.
pub fn render_listen_env(names: &[&str]) -> Result<(String, String), EnvError> {
    if names.len() > MAX_LISTEN_FDS {
        return Err(EnvError::TooMany {
            value: names.len().to_string(),
        });
    }
    for (index, name) in names.iter().enumerate() {
        check_passable_name(index, name)?;
    }
    Ok((names.len().to_string(), names.join(":")))
}

/// Checks that `name` can be passed to a child and read back as itself: not
/// empty (that reads back as [`UNKNOWN_NAME`]), no `:`, printable ASCII, at
/// most [`MAX_FD_NAME_LEN`] bytes.
pub(crate) fn check_passable_name(index: usize, name: &str) -> Result<(), EnvError> {
    if name.is_empty() {
        return Err(EnvError::BadName {
            index,
            name: String::new(),
            reason: "it is empty, and an empty name reads back as \"unknown\"",
        });
    }
    check_name(index, name)
}

/// Removes the socket-activation variables from a command's environment.
///
/// They describe fds passed to *this* process and stay in its environment
/// (changing the environment of a running, multi-threaded process is not
/// safe). Programs you start yourself should not see them: use this on every
/// [`Command`](std::process::Command) you spawn. (`LISTEN_PID` would tell a
/// well-behaved program they are not its own anyway.) The next generation
/// started by [`Upgrader::upgrade`](super::Upgrader::upgrade) gets fresh
/// ones.
///
/// ```
/// use std::process::Command;
///
/// let mut command = Command::new("date");
/// seamless::handoff::remove_activation_env(&mut command);
/// assert_eq!(command.get_envs().count(), 3);
/// ```
pub fn remove_activation_env(command: &mut std::process::Command) -> &mut std::process::Command {
    for var in ACTIVATION_VARS {
        command.env_remove(var);
    }
    command
}

/// Checks one name against systemd's `fdname_is_valid`. Empty is allowed
/// here; the callers decide what it means.
fn check_name(index: usize, name: &str) -> Result<(), EnvError> {
    let bad = |reason| EnvError::BadName {
        index,
        name: name.to_owned(),
        reason,
    };
    if name.len() > MAX_FD_NAME_LEN {
        return Err(bad("it is longer than 255 bytes"));
    }
    if name.contains(':') {
        return Err(bad("it contains ':', the separator of LISTEN_FDNAMES"));
    }
    if !name.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(bad("only printable ASCII is allowed"));
    }
    Ok(())
}

fn utf8<'a>(var: &'static str, value: &'a [u8]) -> Result<&'a str, EnvError> {
    std::str::from_utf8(value).map_err(|_| EnvError::NotUtf8 {
        var,
        value: value.to_vec(),
    })
}

/// Parses plain ASCII decimal. `Ok(None)` means too large for a `u64`.
fn parse_decimal(var: &'static str, value: &str) -> Result<Option<u64>, EnvError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EnvError::NotANumber {
            var,
            value: value.to_owned(),
        });
    }
    Ok(value.bytes().try_fold(0u64, |n, b| {
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    }))
}

fn parse_count(value: &str) -> Result<usize, EnvError> {
    match parse_decimal("LISTEN_FDS", value)? {
        Some(n) if n <= MAX_LISTEN_FDS as u64 => Ok(n as usize),
        _ => Err(EnvError::TooMany {
            value: value.to_owned(),
        }),
    }
}

fn parse_pid(value: &str) -> Result<u32, EnvError> {
    // A `pid_t` is a positive `i32`.
    match parse_decimal("LISTEN_PID", value)? {
        Some(n @ 1..) if n <= i32::MAX as u64 => Ok(n as u32),
        _ => Err(EnvError::PidOutOfRange {
            value: value.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: u32 = 4242;

    fn parse(fds: &str, names: Option<&str>) -> Result<Vec<ListenFd>, EnvError> {
        fds_of(parse_listen_env(
            Some(b"4242"),
            Some(fds.as_bytes()),
            names.map(str::as_bytes),
            PID,
        ))
    }

    fn fds_of(parsed: Result<Activation, EnvError>) -> Result<Vec<ListenFd>, EnvError> {
        parsed.map(|activation| match activation {
            Activation::Fds(fds) => fds,
            other => panic!("expected fds, got {other:?}"),
        })
    }

    fn fd(fd: RawFd, name: &str) -> ListenFd {
        ListenFd {
            fd,
            name: name.to_owned(),
        }
    }

    #[test]
    fn unset_means_nothing_passed() {
        assert_eq!(fds_of(parse_listen_env(None, None, None, PID)), Ok(vec![]));
        // The others do not matter, even when malformed.
        assert_eq!(
            fds_of(parse_listen_env(Some(b"junk"), None, Some(b"\xff"), PID)),
            Ok(vec![])
        );
    }

    #[test]
    fn zero_fds() {
        assert_eq!(parse("0", None), Ok(vec![]));
        assert_eq!(parse("0", Some("")), Ok(vec![]));
        assert_eq!(
            parse("0", Some("a")),
            Err(EnvError::NamesMismatch { fds: 0, names: 1 })
        );
    }

    #[test]
    fn named_and_unnamed() {
        assert_eq!(
            parse("3", Some("http:admin:udp")),
            Ok(vec![fd(3, "http"), fd(4, "admin"), fd(5, "udp")])
        );
        assert_eq!(
            parse("2", None),
            Ok(vec![fd(3, "unknown"), fd(4, "unknown")])
        );
        assert_eq!(
            parse("2", Some(":x")),
            Ok(vec![fd(3, "unknown"), fd(4, "x")])
        );
        assert_eq!(parse("1", Some("")), Ok(vec![fd(3, "unknown")]));
        assert_eq!(parse("007", None).map(|v| v.len()), Ok(7));
    }

    #[test]
    fn max_count() {
        let fds = parse("1024", None).unwrap();
        assert_eq!(fds.len(), MAX_LISTEN_FDS);
        assert_eq!(fds.last().unwrap().fd, 3 + 1023);
        assert_eq!(
            parse("1025", None),
            Err(EnvError::TooMany {
                value: "1025".into()
            })
        );
    }

    #[test]
    fn count_not_a_number() {
        for bad in ["", "abc", "-1", "+1", "3 ", " 3", "0x3", "1.0", "٣"] {
            assert_eq!(
                parse(bad, None),
                Err(EnvError::NotANumber {
                    var: "LISTEN_FDS",
                    value: bad.into()
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn huge_counts() {
        for huge in [
            "4294967299",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
            "99999999999999999999999999999999999999999999999999",
        ] {
            assert_eq!(
                parse(huge, None),
                Err(EnvError::TooMany { value: huge.into() }),
                "{huge}"
            );
        }
    }

    #[test]
    fn pid_checks() {
        // Meant for someone else, as sd_listen_fds() sees it: ignored, even
        // when the rest is malformed.
        assert_eq!(
            parse_listen_env(None, Some(b"1"), None, PID),
            Ok(Activation::NotOurs { listen_pid: None })
        );
        assert_eq!(
            parse_listen_env(Some(b"4243"), Some(b"junk"), Some(b"\xff"), PID),
            Ok(Activation::NotOurs {
                listen_pid: Some(4243)
            })
        );
        assert_eq!(
            parse_listen_env(Some(b"1"), Some(b"0"), None, PID),
            Ok(Activation::NotOurs {
                listen_pid: Some(1)
            })
        );
        for bad in ["", "-4242", "4242 ", "pid"] {
            assert_eq!(
                parse_listen_env(Some(bad.as_bytes()), Some(b"1"), None, PID),
                Err(EnvError::NotANumber {
                    var: "LISTEN_PID",
                    value: bad.into()
                })
            );
        }
        for bad in ["0", "2147483648", "4294967296", "99999999999999999999"] {
            assert_eq!(
                parse_listen_env(Some(bad.as_bytes()), Some(b"1"), None, PID),
                Err(EnvError::PidOutOfRange { value: bad.into() })
            );
        }
        assert_eq!(
            fds_of(parse_listen_env(Some(b"0004242"), Some(b"1"), None, PID)),
            Ok(vec![fd(3, "unknown")])
        );
    }

    #[test]
    fn names_mismatch() {
        assert_eq!(
            parse("2", Some("a")),
            Err(EnvError::NamesMismatch { fds: 2, names: 1 })
        );
        assert_eq!(
            parse("1", Some("a:b")),
            Err(EnvError::NamesMismatch { fds: 1, names: 2 })
        );
        assert_eq!(
            parse("1", Some("a:")),
            Err(EnvError::NamesMismatch { fds: 1, names: 2 })
        );
    }

    #[test]
    fn bad_names() {
        let long = "x".repeat(256);
        for (names, bad) in [
            ("ok:a\nb", "a\nb"),
            ("ok:tab\there", "tab\there"),
            ("ok:caf\u{e9}", "caf\u{e9}"),
            ("ok:del\x7f", "del\x7f"),
        ] {
            match parse("2", Some(names)) {
                Err(EnvError::BadName { index: 1, name, .. }) => assert_eq!(name, bad),
                other => panic!("{names:?}: {other:?}"),
            }
        }
        assert!(matches!(
            parse("1", Some(&long)),
            Err(EnvError::BadName { index: 0, .. })
        ));
        assert!(parse("1", Some(&long[1..])).is_ok());
    }

    #[test]
    fn not_utf8() {
        assert_eq!(
            parse_listen_env(Some(b"1"), Some(b"\xff"), None, 1),
            Err(EnvError::NotUtf8 {
                var: "LISTEN_FDS",
                value: b"\xff".to_vec()
            })
        );
        assert_eq!(
            parse_listen_env(Some(b"\xc3"), Some(b"1"), None, 1),
            Err(EnvError::NotUtf8 {
                var: "LISTEN_PID",
                value: b"\xc3".to_vec()
            })
        );
        assert_eq!(
            parse_listen_env(Some(b"1"), Some(b"1"), Some(b"a\x80"), 1),
            Err(EnvError::NotUtf8 {
                var: "LISTEN_FDNAMES",
                value: b"a\x80".to_vec()
            })
        );
    }

    #[test]
    fn messages_name_the_variable_and_value() {
        let msg = |e: Result<Vec<ListenFd>, EnvError>| e.unwrap_err().to_string();
        let msg_of = |e: Result<Activation, EnvError>| e.unwrap_err().to_string();
        assert_eq!(
            msg(parse("abc", None)),
            "LISTEN_FDS=\"abc\" is not a number"
        );
        assert_eq!(
            msg(parse("5000", None)),
            "LISTEN_FDS=\"5000\" is more than the 1024 fds accepted"
        );
        assert_eq!(
            msg_of(parse_listen_env(Some(b"0"), Some(b"1"), None, 8)),
            "LISTEN_PID=\"0\" is not a valid process id"
        );
        assert_eq!(
            msg_of(parse_listen_env(Some(b"1"), Some(b"\xff"), None, 1)),
            "LISTEN_FDS=\"\\xff\" is not valid UTF-8"
        );
        assert_eq!(
            msg(parse("1", Some("a:b"))),
            "LISTEN_FDNAMES has 2 name(s) but LISTEN_FDS=1"
        );
        assert!(msg(parse("1", Some("a\nb"))).contains("\"a\\nb\""));
        assert!(msg_of(parse_listen_env(Some(b"x"), Some(b"1"), None, 1)).contains("LISTEN_PID"));
    }

    #[test]
    fn render() {
        assert_eq!(render_listen_env(&[]), Ok(("0".into(), String::new())));
        assert_eq!(
            render_listen_env(&["http", "unknown", "a b"]),
            Ok(("3".into(), "http:unknown:a b".into()))
        );
        assert!(matches!(
            render_listen_env(&["ok", ""]),
            Err(EnvError::BadName { index: 1, .. })
        ));
        assert!(matches!(
            render_listen_env(&["a:b"]),
            Err(EnvError::BadName { index: 0, .. })
        ));
        assert!(matches!(
            render_listen_env(&["a\0b"]),
            Err(EnvError::BadName { index: 0, .. })
        ));
        let many = vec!["x"; MAX_LISTEN_FDS + 1];
        assert_eq!(
            render_listen_env(&many),
            Err(EnvError::TooMany {
                value: "1025".into()
            })
        );
    }

    #[test]
    fn render_then_parse_round_trips() {
        for names in [&[][..], &["a"], &["http", "https", "unknown", "~!@ #"]] {
            let (fds, joined) = render_listen_env(names).unwrap();
            let parsed = parse(&fds, Some(&joined)).unwrap();
            let got: Vec<&str> = parsed.iter().map(|f| f.name.as_str()).collect();
            assert_eq!(got, names);
        }
    }
}
