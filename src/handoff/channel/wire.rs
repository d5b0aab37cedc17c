//! The bytes of one channel message: encode and decode, nothing else.
//!
//! Pure: no syscalls, no fds (a message only says how many it carries), so
//! it can be tested and fuzzed on its own. The layout is in the table of the
//! parent module's docs. Every message has exactly one encoding: what
//! [`decode`] accepts, [`Message::encode`] writes back byte for byte.
//!
//! Decoding never panics, allocates nothing (a decoded [`Message`] borrows
//! the input), and answers malformed input with a [`WireError`] naming what
//! was wrong.

use std::fmt;

/// The format version, the first byte of every message. A generation that
/// receives another version refuses the whole channel, and its parent falls
/// back to closing the connections it would have handed over.
pub const VERSION: u8 = 1;

/// The longest message, in bytes. FreeBSD's default limit for a
/// `SOCK_SEQPACKET` message (`net.local.seqpacket.maxseqpacket`) is 8 KiB;
/// Linux allows more.
pub const MAX_MESSAGE_LEN: usize = 8192;

/// The longest listener name, as for a name in `LISTEN_FDNAMES`.
pub const MAX_LISTENER_NAME_LEN: usize = 255;

/// The most state bytes one connection can carry.
pub const MAX_CONNECTION_STATE_LEN: usize = 4096;

/// The largest application state blob (64 MiB). It travels in chunks of at
/// most [`MAX_CHUNK_LEN`] bytes, and the receiver's buffer only grows as
/// chunks actually arrive.
pub const MAX_APP_STATE_LEN: usize = 64 << 20;

/// Version, kind, total and offset: the bytes before a chunk's data.
pub const CHUNK_HEADER_LEN: usize = 1 + 1 + 4 + 4;

/// The most application state bytes in one message.
pub const MAX_CHUNK_LEN: usize = MAX_MESSAGE_LEN - CHUNK_HEADER_LEN;

/// Which message a message is: its second byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A connection handed over, with its fd.
    Connection,
    /// A piece of the application state blob.
    AppState,
    /// The sender has sent everything.
    End,
    /// The receiver has taken this many messages (the reverse direction).
    Ack,
}

impl Kind {
    /// The byte that stands for this kind on the wire.
    pub const fn byte(self) -> u8 {
        match self {
            Kind::Connection => 1,
            Kind::AppState => 2,
            Kind::End => 3,
            Kind::Ack => 4,
        }
    }

    /// The kind a byte stands for.
    pub const fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Connection),
            2 => Some(Kind::AppState),
            3 => Some(Kind::End),
            4 => Some(Kind::Ack),
            _ => None,
        }
    }

    /// How many fds travel with a message of this kind.
    pub const fn fds(self) -> usize {
        match self {
            Kind::Connection => 1,
            Kind::AppState | Kind::End | Kind::Ack => 0,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Connection => "connection",
            Kind::AppState => "application state",
            Kind::End => "end",
            Kind::Ack => "acknowledgement",
        })
    }
}

/// One message, borrowing its variable-length fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A connection accepted on the listener named `listener`; its fd
    /// travels with the message.
    Connection {
        /// The listener's name, as registered with the upgrader: printable
        /// ASCII, no `:`, 1 to [`MAX_LISTENER_NAME_LEN`] bytes.
        listener: &'a str,
        /// What the application saved about the connection, at most
        /// [`MAX_CONNECTION_STATE_LEN`] bytes (often none).
        state: &'a [u8],
    },
    /// `chunk` is the application state's bytes from `offset`, of `total`.
    AppState {
        /// The whole blob's length, the same in every chunk.
        total: u32,
        /// Where this chunk starts in the blob.
        offset: u32,
        /// The bytes: not empty unless `total` is zero.
        chunk: &'a [u8],
    },
    /// The sender has sent everything: `sent` messages came before this one.
    End {
        /// How many messages the sender sent before this one.
        sent: u64,
    },
    /// The receiver has taken the first `received` messages (sent back
    /// on the same socket).
    Ack {
        /// How many messages the receiver has taken, counting from the first.
        received: u64,
    },
}

/// What is wrong with a message (or with a message about to be encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// A message with no bytes at all.
    Empty,
    /// More than [`MAX_MESSAGE_LEN`] bytes.
    TooLong {
        /// The message's length, or at least [`MAX_MESSAGE_LEN`] + 1 if the
        /// socket cut it short.
        len: usize,
    },
    /// A version byte and nothing else.
    NoKind,
    /// The first byte is not [`VERSION`]: another format, from an older or
    /// newer build.
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The second byte names no kind of message.
    UnknownKind {
        /// The kind byte found.
        found: u8,
    },
    /// The message ends before its fields do.
    Short {
        /// The kind of message.
        kind: Kind,
        /// Its length.
        len: usize,
        /// The length its fields need, as far as it could be read.
        needed: usize,
    },
    /// Bytes after the last field.
    Trailing {
        /// The kind of message.
        kind: Kind,
        /// How many bytes too many.
        extra: usize,
    },
    /// A listener name that could not be registered.
    BadListenerName {
        /// The name's bytes (at most [`MAX_LISTENER_NAME_LEN`] of them).
        name: Vec<u8>,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A connection's state is over [`MAX_CONNECTION_STATE_LEN`] bytes.
    ConnectionStateTooLong {
        /// Its length.
        len: usize,
    },
    /// The application state is over [`MAX_APP_STATE_LEN`] bytes.
    AppStateTooLong {
        /// Its length.
        len: u64,
    },
    /// A chunk that does not lie within the blob, is empty in a blob that
    /// is not, or holds more than [`MAX_CHUNK_LEN`] bytes.
    BadChunk {
        /// The blob's length.
        total: u32,
        /// Where the chunk starts.
        offset: u32,
        /// The chunk's length.
        len: usize,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Empty => f.write_str("empty message"),
            WireError::TooLong { len } => {
                write!(
                    f,
                    "message of {len} bytes, over the {MAX_MESSAGE_LEN} allowed"
                )
            }
            WireError::UnsupportedVersion { found } => write!(
                f,
                "message in format version {found}, but this build speaks version {VERSION}"
            ),
            WireError::NoKind => f.write_str("message has a version byte but no kind"),
            WireError::UnknownKind { found } => write!(f, "unknown message kind {found}"),
            WireError::Short { kind, len, needed } => write!(
                f,
                "{kind} message of {len} bytes is cut short: its fields need {needed}"
            ),
            WireError::Trailing { kind, extra } => {
                write!(f, "{kind} message has {extra} byte(s) after its last field")
            }
            WireError::BadListenerName { name, reason } => write!(
                f,
                "listener name \"{}\" is not valid: {reason}",
                name.escape_ascii()
            ),
            WireError::ConnectionStateTooLong { len } => write!(
                f,
                "connection state of {len} bytes, over the {MAX_CONNECTION_STATE_LEN} allowed"
            ),
            WireError::AppStateTooLong { len } => write!(
                f,
                "application state of {len} bytes, over the {MAX_APP_STATE_LEN} allowed"
            ),
            WireError::BadChunk { total, offset, len } => write!(
                f,
                "application state chunk of {len} bytes at offset {offset} \
                 does not fit a blob of {total} bytes"
            ),
        }
    }
}

impl std::error::Error for WireError {}

impl Message<'_> {
    /// Which kind of message this is.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Connection { .. } => Kind::Connection,
            Message::AppState { .. } => Kind::AppState,
            Message::End { .. } => Kind::End,
            Message::Ack { .. } => Kind::Ack,
        }
    }

    /// Writes the message's bytes to `out`, after clearing it.
    ///
    /// # Errors
    ///
    /// The same checks as [`decode`], so nothing is sent that the other
    /// side would refuse: [`WireError::BadListenerName`],
    /// [`WireError::ConnectionStateTooLong`], [`WireError::AppStateTooLong`]
    /// or [`WireError::BadChunk`]. `out` is left empty then.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        out.clear();
        self.check()?;
        out.extend_from_slice(&[VERSION, self.kind().byte()]);
        match *self {
            Message::Connection { listener, state } => {
                // Both fit: `check` bounds them.
                out.push(listener.len() as u8);
                out.extend_from_slice(listener.as_bytes());
                out.extend_from_slice(&(state.len() as u16).to_le_bytes());
                out.extend_from_slice(state);
            }
            Message::AppState {
                total,
                offset,
                chunk,
            } => {
                out.extend_from_slice(&total.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(chunk);
            }
            Message::End { sent: n } | Message::Ack { received: n } => {
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
        debug_assert!(out.len() <= MAX_MESSAGE_LEN);
        Ok(())
    }

    /// The field checks shared by encoding and decoding.
    fn check(&self) -> Result<(), WireError> {
        match *self {
            Message::Connection { listener, state } => {
                check_listener_name(listener.as_bytes())?;
                if state.len() > MAX_CONNECTION_STATE_LEN {
                    return Err(WireError::ConnectionStateTooLong { len: state.len() });
                }
            }
            Message::AppState {
                total,
                offset,
                chunk,
            } => {
                if total as usize > MAX_APP_STATE_LEN {
                    return Err(WireError::AppStateTooLong {
                        len: u64::from(total),
                    });
                }
                let end = u64::from(offset) + chunk.len() as u64;
                let empty_ok = total == 0 && offset == 0;
                if end > u64::from(total)
                    || chunk.len() > MAX_CHUNK_LEN
                    || (chunk.is_empty() && !empty_ok)
                {
                    return Err(WireError::BadChunk {
                        total,
                        offset,
                        len: chunk.len(),
                    });
                }
            }
            Message::End { .. } | Message::Ack { .. } => {}
        }
        Ok(())
    }
}

/// Reads one message.
///
/// # Errors
///
/// - [`WireError::Empty`] for no bytes, [`WireError::TooLong`] for more than
///   [`MAX_MESSAGE_LEN`].
/// - [`WireError::UnsupportedVersion`] if the first byte is not [`VERSION`].
/// - [`WireError::UnknownKind`] if the second byte names no [`Kind`].
/// - [`WireError::Short`] or [`WireError::Trailing`] if the length does not
///   match the fields.
/// - [`WireError::BadListenerName`], [`WireError::ConnectionStateTooLong`],
///   [`WireError::AppStateTooLong`] or [`WireError::BadChunk`] for a field
///   out of bounds.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, WireError> {
    let (&version, rest) = bytes.split_first().ok_or(WireError::Empty)?;
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(WireError::TooLong { len: bytes.len() });
    }
    if version != VERSION {
        return Err(WireError::UnsupportedVersion { found: version });
    }
    let (&kind, _) = rest.split_first().ok_or(WireError::NoKind)?;
    let kind = Kind::from_byte(kind).ok_or(WireError::UnknownKind { found: kind })?;
    let mut r = Reader {
        bytes,
        pos: 2,
        kind,
    };
    let message = match kind {
        Kind::Connection => {
            let name_len = r.u8()?;
            let name = r.take(usize::from(name_len))?;
            check_listener_name(name)?;
            let state_len = r.u16()?;
            if usize::from(state_len) > MAX_CONNECTION_STATE_LEN {
                return Err(WireError::ConnectionStateTooLong {
                    len: usize::from(state_len),
                });
            }
            let state = r.take(usize::from(state_len))?;
            Message::Connection {
                // Checked: printable ASCII is UTF-8.
                listener: std::str::from_utf8(name).unwrap_or_default(),
                state,
            }
        }
        Kind::AppState => {
            let total = r.u32()?;
            let offset = r.u32()?;
            let chunk = r.rest();
            Message::AppState {
                total,
                offset,
                chunk,
            }
        }
        Kind::End => Message::End { sent: r.u64()? },
        Kind::Ack => Message::Ack { received: r.u64()? },
    };
    r.finish()?;
    message.check()?;
    Ok(message)
}

/// Checks a listener name as `LISTEN_FDNAMES` would carry it: 1 to 255
/// bytes of printable ASCII, no `:`.
pub fn check_listener_name(name: &[u8]) -> Result<(), WireError> {
    let bad = |reason| WireError::BadListenerName {
        name: name[..name.len().min(MAX_LISTENER_NAME_LEN)].to_vec(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > MAX_LISTENER_NAME_LEN {
        return Err(bad("it is longer than 255 bytes"));
    }
    if name.contains(&b':') {
        return Err(bad("it contains ':', the separator of LISTEN_FDNAMES"));
    }
    if !name.iter().all(|b| (b' '..=b'~').contains(b)) {
        return Err(bad("only printable ASCII is allowed"));
    }
    Ok(())
}

/// Splits an application state blob into the messages that carry it, in
/// order. An empty blob is one empty chunk.
///
/// # Errors
///
/// [`WireError::AppStateTooLong`] if `blob` is over [`MAX_APP_STATE_LEN`].
pub fn app_state_chunks(blob: &[u8]) -> Result<AppStateChunks<'_>, WireError> {
    if blob.len() > MAX_APP_STATE_LEN {
        return Err(WireError::AppStateTooLong {
            len: blob.len() as u64,
        });
    }
    Ok(AppStateChunks {
        blob,
        offset: 0,
        done: false,
    })
}

/// The messages carrying an application state blob, from
/// [`app_state_chunks`].
#[derive(Debug, Clone)]
pub struct AppStateChunks<'a> {
    blob: &'a [u8],
    offset: usize,
    done: bool,
}

impl<'a> Iterator for AppStateChunks<'a> {
    type Item = Message<'a>;

    fn next(&mut self) -> Option<Message<'a>> {
        if self.done {
            return None;
        }
        let end = self.blob.len().min(self.offset + MAX_CHUNK_LEN);
        // Both fit: the blob is at most `MAX_APP_STATE_LEN` bytes.
        let message = Message::AppState {
            total: self.blob.len() as u32,
            offset: self.offset as u32,
            chunk: &self.blob[self.offset..end],
        };
        self.offset = end;
        self.done = end == self.blob.len();
        Some(message)
    }
}

/// Reads fields in order, naming the message when it runs out.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    kind: Kind,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let needed = self.pos + n;
        let field = self.bytes.get(self.pos..needed).ok_or(WireError::Short {
            kind: self.kind,
            len: self.bytes.len(),
            needed,
        })?;
        self.pos = needed;
        Ok(field)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_le_bytes)
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        rest
    }

    fn finish(&self) -> Result<(), WireError> {
        match self.bytes.len() - self.pos {
            0 => Ok(()),
            extra => Err(WireError::Trailing {
                kind: self.kind,
                extra,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(message: Message<'_>) -> Vec<u8> {
        let mut bytes = Vec::new();
        message.encode(&mut bytes).unwrap();
        bytes
    }

    fn round_trip(message: Message<'_>) {
        let bytes = encoded(message);
        assert!(bytes.len() <= MAX_MESSAGE_LEN);
        assert_eq!(decode(&bytes), Ok(message));
    }

    #[test]
    fn the_layout_is_as_documented() {
        assert_eq!(
            encoded(Message::Connection {
                listener: "http",
                state: b"s",
            }),
            [1, 1, 4, b'h', b't', b't', b'p', 1, 0, b's']
        );
        assert_eq!(
            encoded(Message::AppState {
                total: 3,
                offset: 1,
                chunk: b"yz",
            }),
            [1, 2, 3, 0, 0, 0, 1, 0, 0, 0, b'y', b'z']
        );
        assert_eq!(
            encoded(Message::End { sent: 0x0102 }),
            [1, 3, 2, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            encoded(Message::Ack { received: 7 }),
            [1, 4, 7, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn every_kind_round_trips_at_its_limits() {
        let name = "n".repeat(MAX_LISTENER_NAME_LEN);
        let state = vec![0xff; MAX_CONNECTION_STATE_LEN];
        let chunk = vec![0x5a; MAX_CHUNK_LEN];
        for message in [
            Message::Connection {
                listener: "a",
                state: b"",
            },
            Message::Connection {
                listener: &name,
                state: &state,
            },
            Message::Connection {
                listener: " ~!\"#$%&'()*+,-./;<=>?@[\\]^_`{|}",
                state: b"\0\x01",
            },
            Message::AppState {
                total: 0,
                offset: 0,
                chunk: b"",
            },
            Message::AppState {
                total: MAX_APP_STATE_LEN as u32,
                offset: (MAX_APP_STATE_LEN - MAX_CHUNK_LEN) as u32,
                chunk: &chunk,
            },
            Message::End { sent: 0 },
            Message::End { sent: u64::MAX },
            Message::Ack { received: 0 },
            Message::Ack { received: u64::MAX },
        ] {
            round_trip(message);
        }
        let longest = encoded(Message::AppState {
            total: MAX_CHUNK_LEN as u32,
            offset: 0,
            chunk: &chunk,
        });
        assert_eq!(longest.len(), MAX_MESSAGE_LEN);
    }

    #[test]
    fn kinds_and_their_bytes_agree() {
        for kind in [Kind::Connection, Kind::AppState, Kind::End, Kind::Ack] {
            assert_eq!(Kind::from_byte(kind.byte()), Some(kind));
            assert!(!kind.to_string().is_empty());
        }
        assert_eq!(Kind::from_byte(0), None);
        assert_eq!(Kind::from_byte(5), None);
        assert_eq!(Kind::Connection.fds(), 1);
        assert_eq!(Kind::End.fds(), 0);
    }

    #[test]
    fn framing_errors_are_named() {
        assert_eq!(decode(b""), Err(WireError::Empty));
        assert_eq!(decode(&[1]), Err(WireError::NoKind));
        assert_eq!(
            decode(&[0, 1]),
            Err(WireError::UnsupportedVersion { found: 0 })
        );
        assert_eq!(
            decode(&[2, 3, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(WireError::UnsupportedVersion { found: 2 })
        );
        assert_eq!(decode(&[1, 0]), Err(WireError::UnknownKind { found: 0 }));
        assert_eq!(
            decode(&[1, 200]),
            Err(WireError::UnknownKind { found: 200 })
        );
        let long = vec![1; MAX_MESSAGE_LEN + 1];
        assert_eq!(
            decode(&long),
            Err(WireError::TooLong {
                len: MAX_MESSAGE_LEN + 1
            })
        );
    }

    #[test]
    fn every_cut_of_every_kind_is_short() {
        for message in [
            Message::Connection {
                listener: "web",
                state: b"st",
            },
            Message::AppState {
                total: 2,
                offset: 0,
                chunk: b"ab",
            },
            Message::End { sent: 9 },
            Message::Ack { received: 9 },
        ] {
            let bytes = encoded(message);
            // An application state chunk may be cut anywhere after its
            // header: then it is a shorter chunk, checked below.
            let fixed = match message {
                Message::AppState { .. } => CHUNK_HEADER_LEN,
                _ => bytes.len(),
            };
            for len in 2..fixed {
                let result = decode(&bytes[..len]);
                assert!(
                    matches!(result, Err(WireError::Short { kind, len: l, needed })
                        if kind == message.kind() && l == len && needed > len),
                    "{message:?} cut at {len}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        for message in [
            Message::Connection {
                listener: "web",
                state: b"",
            },
            Message::End { sent: 1 },
            Message::Ack { received: 1 },
        ] {
            let mut bytes = encoded(message);
            bytes.extend_from_slice(b"xy");
            assert_eq!(
                decode(&bytes),
                Err(WireError::Trailing {
                    kind: message.kind(),
                    extra: 2
                })
            );
        }
        // A chunk has no trailer: extra bytes make it longer than its blob.
        let mut bytes = encoded(Message::AppState {
            total: 2,
            offset: 0,
            chunk: b"ab",
        });
        bytes.push(b'c');
        assert_eq!(
            decode(&bytes),
            Err(WireError::BadChunk {
                total: 2,
                offset: 0,
                len: 3
            })
        );
    }

    #[test]
    fn bad_listener_names_are_named() {
        let cases: [(&[u8], &str); 4] = [
            (b"", "empty"),
            (b"a:b", "':'"),
            (b"tab\t", "printable"),
            ("caf\u{e9}".as_bytes(), "printable"),
        ];
        for (name, reason) in cases {
            let mut bytes = vec![1, 1, name.len() as u8];
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(&[0, 0]);
            let err = decode(&bytes).unwrap_err();
            assert!(
                matches!(&err, WireError::BadListenerName { name: n, reason: r }
                    if n == name && r.contains(reason)),
                "{name:?}: {err:?}"
            );
            assert!(err.to_string().contains(reason), "{err}");
            if let Ok(listener) = std::str::from_utf8(name) {
                let encode = Message::Connection {
                    listener,
                    state: b"",
                }
                .encode(&mut Vec::new());
                assert_eq!(encode, Err(err));
            }
        }
        let long = "n".repeat(MAX_LISTENER_NAME_LEN + 1);
        let mut out = vec![9];
        let err = Message::Connection {
            listener: &long,
            state: b"",
        }
        .encode(&mut out)
        .unwrap_err();
        assert!(matches!(err, WireError::BadListenerName { ref name, .. }
            if name.len() == MAX_LISTENER_NAME_LEN));
        assert!(out.is_empty(), "a failed encode leaves nothing behind");
    }

    #[test]
    fn oversized_fields_are_named() {
        // A state length over the limit is refused before its bytes are
        // looked for.
        let mut bytes = vec![1, 1, 1, b'l'];
        bytes.extend_from_slice(&(MAX_CONNECTION_STATE_LEN as u16 + 1).to_le_bytes());
        assert_eq!(
            decode(&bytes),
            Err(WireError::ConnectionStateTooLong {
                len: MAX_CONNECTION_STATE_LEN + 1
            })
        );
        let state = vec![0; MAX_CONNECTION_STATE_LEN + 1];
        let err = Message::Connection {
            listener: "l",
            state: &state,
        }
        .encode(&mut Vec::new());
        assert_eq!(
            err,
            Err(WireError::ConnectionStateTooLong {
                len: MAX_CONNECTION_STATE_LEN + 1
            })
        );

        let too_big = MAX_APP_STATE_LEN as u32 + 1;
        let mut bytes = vec![1, 2];
        bytes.extend_from_slice(&too_big.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.push(0);
        assert_eq!(
            decode(&bytes),
            Err(WireError::AppStateTooLong {
                len: u64::from(too_big)
            })
        );
        assert!(matches!(
            app_state_chunks(&vec![0; MAX_APP_STATE_LEN + 1]),
            Err(WireError::AppStateTooLong { .. })
        ));
    }

    #[test]
    fn chunks_outside_their_blob_are_refused() {
        for (total, offset, chunk) in [
            (4, 3, &b"ab"[..]),
            (4, u32::MAX, b"a"),
            (4, 0, b""),
            (0, 1, b""),
            (0, 0, b"a"),
        ] {
            let message = Message::AppState {
                total,
                offset,
                chunk,
            };
            let expected = Err(WireError::BadChunk {
                total,
                offset,
                len: chunk.len(),
            });
            assert_eq!(message.encode(&mut Vec::new()), expected);
            let mut bytes = vec![1, 2];
            bytes.extend_from_slice(&total.to_le_bytes());
            bytes.extend_from_slice(&offset.to_le_bytes());
            bytes.extend_from_slice(chunk);
            assert_eq!(decode(&bytes).map(|_| ()), expected);
        }
        let chunk = vec![0; MAX_CHUNK_LEN + 1];
        let message = Message::AppState {
            total: chunk.len() as u32,
            offset: 0,
            chunk: &chunk,
        };
        assert!(matches!(
            message.encode(&mut Vec::new()),
            Err(WireError::BadChunk { .. })
        ));
    }

    #[test]
    fn blobs_split_into_chunks_that_cover_them() {
        for len in [
            0,
            1,
            MAX_CHUNK_LEN - 1,
            MAX_CHUNK_LEN,
            MAX_CHUNK_LEN + 1,
            3 * MAX_CHUNK_LEN,
        ] {
            let blob: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut rebuilt = Vec::new();
            let mut count = 0;
            for message in app_state_chunks(&blob).unwrap() {
                let Message::AppState {
                    total,
                    offset,
                    chunk,
                } = message
                else {
                    panic!("{message:?}");
                };
                assert_eq!(total as usize, len);
                assert_eq!(offset as usize, rebuilt.len());
                rebuilt.extend_from_slice(chunk);
                round_trip(message);
                count += 1;
            }
            assert_eq!(rebuilt, blob);
            assert_eq!(count, len.div_ceil(MAX_CHUNK_LEN).max(1), "{len}");
        }
    }

    #[test]
    fn messages_say_what_was_wrong() {
        assert_eq!(
            WireError::UnsupportedVersion { found: 2 }.to_string(),
            "message in format version 2, but this build speaks version 1"
        );
        assert_eq!(
            WireError::Short {
                kind: Kind::End,
                len: 5,
                needed: 10
            }
            .to_string(),
            "end message of 5 bytes is cut short: its fields need 10"
        );
        assert_eq!(
            WireError::BadListenerName {
                name: b"a\tb".to_vec(),
                reason: "only printable ASCII is allowed"
            }
            .to_string(),
            "listener name \"a\\tb\" is not valid: only printable ASCII is allowed"
        );
    }
}
