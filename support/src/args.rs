//! Command-line options as the http example, the demo and the hyper
//! package take them: `--name value` or `--name=value`, a flag alone,
//! durations in milliseconds. Every error is `InvalidInput`, names the option and ends
//! with the usage line.
//!
//! ```
//! use seamless_test_support::args::CommandLine;
//!
//! let mut listen = String::from("127.0.0.1:8080");
//! let mut verbose = false;
//! let mut options = CommandLine::new(["--listen=127.0.0.1:0", "-v"].map(String::from), "usage: x");
//! while let Some(name) = options.next_name() {
//!     match name.as_str() {
//!         "--listen" => listen = options.value()?,
//!         "-v" => verbose = options.flag()?,
//!         _ => return Err(options.unknown()),
//!     }
//! }
//! assert_eq!((listen.as_str(), verbose), ("127.0.0.1:0", true));
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fmt;
use std::io;
use std::str::FromStr;
use std::time::Duration;

/// The options left to read, one name at a time.
#[derive(Debug)]
pub struct CommandLine<I> {
    args: I,
    usage: &'static str,
    /// The option being read, and its value if given as `--name=value`.
    name: String,
    inline: Option<String>,
}

impl<I: Iterator<Item = String>> CommandLine<I> {
    /// Reads `args` (without the program name); errors end with `usage`.
    pub fn new(args: impl IntoIterator<IntoIter = I>, usage: &'static str) -> Self {
        CommandLine {
            args: args.into_iter(),
            usage,
            name: String::new(),
            inline: None,
        }
    }

    /// The next option's name (`--name` of `--name=value`).
    pub fn next_name(&mut self) -> Option<String> {
        let arg = self.args.next()?;
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_owned(), Some(value.into())),
            _ => (arg, None),
        };
        self.name.clone_from(&name);
        self.inline = inline;
        Some(name)
    }

    /// The current option's value: after `=`, or the next argument.
    pub fn value(&mut self) -> io::Result<String> {
        match self.inline.take().or_else(|| self.args.next()) {
            Some(value) => Ok(value),
            None => Err(self.error(format_args!("{} needs a value", self.name))),
        }
    }

    /// The current option's value, parsed.
    pub fn parsed<T: FromStr>(&mut self) -> io::Result<T> {
        let value = self.value()?;
        value
            .parse()
            .map_err(|_| self.error(format_args!("{}: bad value {value:?}", self.name)))
    }

    /// The current option's value, a whole number of milliseconds.
    pub fn millis(&mut self) -> io::Result<Duration> {
        let value = self.value()?;
        match value.parse::<u64>() {
            Ok(ms) => Ok(Duration::from_millis(ms)),
            Err(_) => Err(self.error(format_args!(
                "{}: not a number of milliseconds: {value}",
                self.name
            ))),
        }
    }

    /// The current option is a flag: `true`, or an error if it was given
    /// a value.
    pub fn flag(&self) -> io::Result<bool> {
        match &self.inline {
            None => Ok(true),
            Some(_) => Err(self.error(format_args!("{} takes no value", self.name))),
        }
    }

    /// The error for the current option, not one this program knows.
    pub fn unknown(&self) -> io::Error {
        self.error(format_args!("unknown argument {:?}", self.name))
    }

    /// An `InvalidInput` error: `message`, then the usage line.
    pub fn error(&self, message: impl fmt::Display) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{message}\n{}", self.usage),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> CommandLine<std::vec::IntoIter<String>> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        CommandLine::new(args, "usage: test")
    }

    #[test]
    fn both_spellings_flags_and_numbers() {
        let mut o = options(&["--a=1", "--b", "2", "--c", "--d=x=y", "-e", "30"]);
        assert_eq!(o.next_name().as_deref(), Some("--a"));
        assert_eq!(o.millis().unwrap(), Duration::from_millis(1));
        assert_eq!(o.next_name().as_deref(), Some("--b"));
        assert_eq!(o.parsed::<u8>().unwrap(), 2);
        assert_eq!(o.next_name().as_deref(), Some("--c"));
        assert!(o.flag().unwrap());
        assert_eq!(o.next_name().as_deref(), Some("--d"));
        assert_eq!(o.value().unwrap(), "x=y");
        assert_eq!(o.next_name().as_deref(), Some("-e"));
        assert_eq!(o.value().unwrap(), "30");
        assert_eq!(o.next_name(), None);
    }

    #[test]
    fn errors_name_the_option_and_end_with_the_usage() {
        let mut o = options(&["--n", "soon"]);
        o.next_name();
        let e = o.millis().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e
            .to_string()
            .contains("--n: not a number of milliseconds: soon"));
        assert!(e.to_string().ends_with("\nusage: test"), "{e}");

        let mut o = options(&["--n", "x"]);
        o.next_name();
        assert!(o
            .parsed::<u8>()
            .unwrap_err()
            .to_string()
            .contains("--n: bad value \"x\""));

        let mut o = options(&["--listen"]);
        o.next_name();
        assert!(o
            .value()
            .unwrap_err()
            .to_string()
            .contains("--listen needs a value"));

        let mut o = options(&["--verbose=yes"]);
        o.next_name();
        assert!(o
            .flag()
            .unwrap_err()
            .to_string()
            .contains("--verbose takes no value"));
        assert!(o
            .unknown()
            .to_string()
            .contains("unknown argument \"--verbose\""));
    }
}
