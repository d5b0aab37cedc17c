//! Command-line options, read as the library's examples read theirs
//! (`seamless_test_support::args`): `--name value` or `--name=value`,
//! durations in milliseconds.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use seamless_test_support::args::CommandLine;

/// Command-line settings.
#[derive(Debug, Clone)]
pub struct Args {
    /// Where to listen if no listener is inherited.
    pub listen: String,
    /// Where each generation writes its pid once ready.
    pub pid_file: Option<PathBuf>,
    /// How long the next generation has to become ready.
    pub ready_timeout: Duration,
    /// The drain deadline, after an upgrade or on SIGTERM.
    pub drain_timeout: Duration,
    /// seamless's idle grace (`None`: the library's default).
    pub idle_grace: Option<Duration>,
    /// seamless's first-byte grace (`None`: the library's default).
    pub first_byte_grace: Option<Duration>,
    /// hyper's `header_read_timeout`: a request head must arrive within it,
    /// on a new connection and between two requests of a kept-alive one.
    pub header_read_timeout: Duration,
    /// Log every connection accepted, every request and every connection
    /// closed (with `--events`, as event lines too: the tests synchronise on
    /// those).
    pub verbose: bool,
    /// Write machine-readable event lines on stderr too, for the test
    /// harness.
    pub events: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            listen: "127.0.0.1:8080".into(),
            pid_file: None,
            ready_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            idle_grace: None,
            first_byte_grace: None,
            // hyper's own default.
            header_read_timeout: Duration::from_secs(30),
            verbose: false,
            events: false,
        }
    }
}

const USAGE: &str = "usage: seamless-hyper [--listen ADDR] [--pid-file PATH] \
                     [--ready-timeout-ms N] [--drain-timeout-ms N] [--idle-grace-ms N] \
                     [--first-byte-grace-ms N] [--header-read-timeout-ms N] [--verbose] [--events]";

/// Parses the options (without the program name).
pub fn parse(args: impl Iterator<Item = String>) -> io::Result<Args> {
    let mut parsed = Args::default();
    let mut options = CommandLine::new(args, USAGE);
    while let Some(name) = options.next_name() {
        match name.as_str() {
            "--listen" => parsed.listen = options.value()?,
            "--pid-file" => parsed.pid_file = Some(options.value()?.into()),
            "--ready-timeout-ms" => parsed.ready_timeout = options.millis()?,
            "--drain-timeout-ms" => parsed.drain_timeout = options.millis()?,
            "--idle-grace-ms" => parsed.idle_grace = Some(options.millis()?),
            "--first-byte-grace-ms" => parsed.first_byte_grace = Some(options.millis()?),
            "--header-read-timeout-ms" => parsed.header_read_timeout = options.millis()?,
            "--verbose" => parsed.verbose = options.flag()?,
            "--events" => parsed.events = options.flag()?,
            "-h" | "--help" => return Err(options.error("help")),
            _ => return Err(options.unknown()),
        }
    }
    if parsed.header_read_timeout.is_zero() {
        return Err(options.error("--header-read-timeout-ms must be above 0"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(args: &[&str]) -> io::Result<Args> {
        parse(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn both_spellings_and_every_option() {
        let args = parse_all(&[
            "--listen=127.0.0.1:0",
            "--pid-file",
            "/tmp/p",
            "--ready-timeout-ms",
            "5",
            "--drain-timeout-ms=6",
            "--idle-grace-ms",
            "7",
            "--first-byte-grace-ms=8",
            "--header-read-timeout-ms",
            "9",
            "--verbose",
            "--events",
        ])
        .unwrap();
        assert_eq!(args.listen, "127.0.0.1:0");
        assert_eq!(args.pid_file, Some(PathBuf::from("/tmp/p")));
        assert_eq!(args.ready_timeout, Duration::from_millis(5));
        assert_eq!(args.drain_timeout, Duration::from_millis(6));
        assert_eq!(args.idle_grace, Some(Duration::from_millis(7)));
        assert_eq!(args.first_byte_grace, Some(Duration::from_millis(8)));
        assert_eq!(args.header_read_timeout, Duration::from_millis(9));
        assert!(args.verbose);
        assert!(args.events);
        assert!(!parse_all(&[]).unwrap().events);
    }

    #[test]
    fn bad_input_is_an_error_naming_it() {
        for (args, names) in [
            (&["--drain-timeout-ms", "soon"][..], "soon"),
            (&["--listen"][..], "--listen needs a value"),
            (&["--bogus"][..], "--bogus"),
            (&["--verbose=yes"][..], "--verbose"),
            (&["--events=no"][..], "--events"),
            (&["--header-read-timeout-ms", "0"][..], "above 0"),
        ] {
            let error = parse_all(args).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
            assert!(error.to_string().contains(names), "{error}");
        }
    }
}
