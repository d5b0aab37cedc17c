//! The order of messages on a channel: what the receiving generation takes,
//! in which order, and which acknowledgements the sending one believes.
//!
//! Pure, like [`wire`]: each side feeds the bytes of each
//! message it received and the number of fds that came with it, and gets
//! back what the message means or a [`StreamError`]. Errors are final: once
//! one is returned, every later call returns it again, so a broken peer
//! cannot make a side take anything after it.

use std::fmt;

use super::wire::{self, Kind, Message, WireError, MAX_APP_STATE_LEN};

/// The receiving side's state: what it has taken so far.
#[derive(Debug, Default)]
pub struct Inbound {
    /// How many messages were taken: the count the receiver acknowledges.
    received: u64,
    /// Whether the end marker was taken.
    ended: bool,
    app_state: AppState,
    error: Option<StreamError>,
}

#[derive(Debug, Default)]
enum AppState {
    #[default]
    None,
    Partial {
        total: u32,
        bytes: Vec<u8>,
    },
    Done,
}

/// What a message taken by [`Inbound::receive`] means.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery<'a> {
    /// A connection for the listener named `listener`; the one fd that came
    /// with the message is the connection.
    Connection {
        /// The listener's name.
        listener: &'a str,
        /// The application's state for the connection.
        state: &'a [u8],
    },
    /// A piece of the application state, kept until the rest arrives.
    AppStateChunk,
    /// The whole application state, with this message's chunk the last.
    AppState(Vec<u8>),
    /// The end marker: the sender has sent everything. Only end-of-file may
    /// follow.
    End,
}

/// How a channel ended, told at end-of-file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The end marker came before end-of-file: everything the sender meant
    /// to send has arrived.
    Finished,
    /// End-of-file without the end marker: the sender died or gave up part
    /// way.
    Abandoned {
        /// How many messages had arrived.
        received: u64,
    },
}

/// Why one side stopped believing the other.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// A message could not be decoded.
    Wire(WireError),
    /// A message came with another number of fds than its kind carries.
    WrongFds {
        /// The message's kind.
        kind: Kind,
        /// How many fds that kind carries.
        expected: usize,
        /// How many arrived with it.
        received: usize,
    },
    /// The socket dropped fds sent with a message (`MSG_CTRUNC`): more were
    /// sent than a message can carry, or this process hit its fd limit.
    FdsLost,
    /// A message that belongs to the other direction: an acknowledgement
    /// sent to the receiving generation, or anything else sent to the
    /// sending one.
    WrongDirection {
        /// The message's kind.
        kind: Kind,
    },
    /// A message after the end marker.
    AfterEnd {
        /// The message's kind.
        kind: Kind,
    },
    /// A second application state, after a complete one.
    AppStateTwice,
    /// An application state chunk that does not continue where the last
    /// one stopped.
    AppStateOutOfOrder {
        /// The offset expected next.
        expected: u32,
        /// The offset received.
        offset: u32,
    },
    /// A chunk naming another blob length than the chunks before it.
    AppStateTotalChanged {
        /// The length named before.
        was: u32,
        /// The length named now.
        now: u32,
    },
    /// The end marker came while the application state was incomplete.
    AppStateUnfinished {
        /// How many of its bytes had arrived.
        received: usize,
        /// Its length.
        total: u32,
    },
    /// The end marker counts another number of messages than arrived.
    EndCount {
        /// What the marker says the sender sent.
        sent: u64,
        /// How many messages arrived before it.
        received: u64,
    },
    /// An acknowledgement counting fewer messages than an earlier one.
    AckBackwards {
        /// The count acknowledged before.
        was: u64,
        /// The count acknowledged now.
        now: u64,
    },
    /// An acknowledgement counting more messages than were sent.
    AckAhead {
        /// The count acknowledged.
        acked: u64,
        /// How many messages were sent.
        sent: u64,
    },
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Wire(e) => e.fmt(f),
            StreamError::WrongFds {
                kind,
                expected,
                received,
            } => write!(
                f,
                "{kind} message came with {received} fd(s) instead of {expected}"
            ),
            StreamError::FdsLost => f.write_str(
                "fds sent with a message were dropped (too many, or this process is out of fds)",
            ),
            StreamError::WrongDirection { kind } => {
                write!(f, "{kind} message sent in the wrong direction")
            }
            StreamError::AfterEnd { kind } => write!(f, "{kind} message after the end marker"),
            StreamError::AppStateTwice => f.write_str("a second application state"),
            StreamError::AppStateOutOfOrder { expected, offset } => write!(
                f,
                "application state chunk at offset {offset}, expected {expected}"
            ),
            StreamError::AppStateTotalChanged { was, now } => write!(
                f,
                "application state chunk says the blob has {now} bytes, earlier ones said {was}"
            ),
            StreamError::AppStateUnfinished { received, total } => write!(
                f,
                "end marker after only {received} of the application state's {total} bytes"
            ),
            StreamError::EndCount { sent, received } => write!(
                f,
                "end marker says {sent} message(s) were sent, but {received} arrived"
            ),
            StreamError::AckBackwards { was, now } => {
                write!(f, "acknowledgement of {now} message(s) after one of {was}")
            }
            StreamError::AckAhead { acked, sent } => write!(
                f,
                "acknowledgement of {acked} message(s), but only {sent} were sent"
            ),
        }
    }
}

impl std::error::Error for StreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StreamError::Wire(e) => Some(e),
            _ => None,
        }
    }
}

impl From<WireError> for StreamError {
    fn from(e: WireError) -> Self {
        StreamError::Wire(e)
    }
}

impl Inbound {
    /// A receiver that has taken nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next message, which came with `fds` fds.
    ///
    /// The application state is kept here until complete; its buffer grows
    /// only as chunks arrive, never beyond [`MAX_APP_STATE_LEN`].
    ///
    /// # Errors
    ///
    /// A [`StreamError`] for a message that cannot be decoded, carries the
    /// wrong number of fds, goes the wrong way, comes after the end marker,
    /// or does not continue the application state. Once an error is
    /// returned, every later call returns it again and takes nothing.
    pub fn receive<'a>(
        &mut self,
        bytes: &'a [u8],
        fds: usize,
    ) -> Result<Delivery<'a>, StreamError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.take(bytes, fds) {
            Ok(delivery) => {
                self.received += 1;
                Ok(delivery)
            }
            Err(e) => {
                // What was kept of a blob is of no use now.
                self.app_state = AppState::None;
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    fn take<'a>(&mut self, bytes: &'a [u8], fds: usize) -> Result<Delivery<'a>, StreamError> {
        let message = wire::decode(bytes)?;
        let kind = message.kind();
        check_fds(kind, fds)?;
        if self.ended {
            return Err(StreamError::AfterEnd { kind });
        }
        match message {
            Message::Connection { listener, state } => Ok(Delivery::Connection { listener, state }),
            Message::AppState {
                total,
                offset,
                chunk,
            } => self.take_chunk(total, offset, chunk),
            Message::End { sent } => {
                if let AppState::Partial { total, bytes } = &self.app_state {
                    return Err(StreamError::AppStateUnfinished {
                        received: bytes.len(),
                        total: *total,
                    });
                }
                if sent != self.received {
                    return Err(StreamError::EndCount {
                        sent,
                        received: self.received,
                    });
                }
                self.ended = true;
                Ok(Delivery::End)
            }
            Message::Ack { .. } => Err(StreamError::WrongDirection { kind }),
        }
    }

    fn take_chunk<'a>(
        &mut self,
        total: u32,
        offset: u32,
        chunk: &[u8],
    ) -> Result<Delivery<'a>, StreamError> {
        // On an error the state stays taken: `receive` forgets it anyway.
        let mut bytes = match std::mem::take(&mut self.app_state) {
            AppState::Done => return Err(StreamError::AppStateTwice),
            AppState::None => Vec::new(),
            AppState::Partial { total: was, bytes } if was == total => bytes,
            AppState::Partial { total: was, .. } => {
                return Err(StreamError::AppStateTotalChanged { was, now: total })
            }
        };
        // The decoder checked that the chunk lies within `total`, which is
        // at most `MAX_APP_STATE_LEN`: so is `bytes`, and it fits a `u32`.
        let expected = bytes.len() as u32;
        if offset != expected {
            return Err(StreamError::AppStateOutOfOrder { expected, offset });
        }
        bytes.extend_from_slice(chunk);
        debug_assert!(bytes.len() <= MAX_APP_STATE_LEN);
        if bytes.len() < total as usize {
            self.app_state = AppState::Partial { total, bytes };
            Ok(Delivery::AppStateChunk)
        } else {
            self.app_state = AppState::Done;
            Ok(Delivery::AppState(bytes))
        }
    }

    /// How many messages were taken: what the receiver acknowledges.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Says the channel reached end-of-file, and how it ended.
    pub fn close(&self) -> Ending {
        if self.ended {
            Ending::Finished
        } else {
            Ending::Abandoned {
                received: self.received,
            }
        }
    }
}

/// The sending side's view of the acknowledgements.
#[derive(Debug, Default)]
pub struct AckTracker {
    acked: u64,
    error: Option<StreamError>,
}

impl AckTracker {
    /// No message acknowledged yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a message received by the sending side, which came with `fds`
    /// fds, when `sent` messages have been sent so far. Returns the new
    /// count of acknowledged messages if it grew.
    ///
    /// # Errors
    ///
    /// A [`StreamError`] for a message that cannot be decoded, is not an
    /// acknowledgement, carries fds, or counts fewer messages than before or
    /// more than were sent. Errors are final, as for [`Inbound::receive`].
    pub fn receive(
        &mut self,
        bytes: &[u8],
        fds: usize,
        sent: u64,
    ) -> Result<Option<u64>, StreamError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let result = self.take(bytes, fds, sent);
        if let Err(e) = &result {
            self.error = Some(e.clone());
        }
        result
    }

    fn take(&mut self, bytes: &[u8], fds: usize, sent: u64) -> Result<Option<u64>, StreamError> {
        let message = wire::decode(bytes)?;
        let kind = message.kind();
        check_fds(kind, fds)?;
        let Message::Ack { received } = message else {
            return Err(StreamError::WrongDirection { kind });
        };
        if received < self.acked {
            return Err(StreamError::AckBackwards {
                was: self.acked,
                now: received,
            });
        }
        if received > sent {
            return Err(StreamError::AckAhead {
                acked: received,
                sent,
            });
        }
        let grew = received > self.acked;
        self.acked = received;
        Ok(grew.then_some(received))
    }

    /// How many messages the receiver has acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }
}

fn check_fds(kind: Kind, received: usize) -> Result<(), StreamError> {
    if received == kind.fds() {
        Ok(())
    } else {
        Err(StreamError::WrongFds {
            kind,
            expected: kind.fds(),
            received,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::channel::wire::app_state_chunks;

    fn bytes(message: Message<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        message.encode(&mut out).unwrap();
        out
    }

    fn connection(name: &str) -> Vec<u8> {
        bytes(Message::Connection {
            listener: name,
            state: name.as_bytes(),
        })
    }

    fn chunk(total: u32, offset: u32, chunk: &[u8]) -> Vec<u8> {
        bytes(Message::AppState {
            total,
            offset,
            chunk,
        })
    }

    fn end(sent: u64) -> Vec<u8> {
        bytes(Message::End { sent })
    }

    #[test]
    fn a_whole_stream_is_taken_in_order_and_finishes() {
        let mut inbound = Inbound::new();
        assert_eq!(
            inbound.receive(&connection("a"), 1),
            Ok(Delivery::Connection {
                listener: "a",
                state: b"a"
            })
        );
        let blob: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        let mut chunks: Vec<Vec<u8>> = app_state_chunks(&blob).unwrap().map(bytes).collect();
        let last = chunks.pop().unwrap();
        for c in &chunks {
            assert_eq!(inbound.receive(c, 0), Ok(Delivery::AppStateChunk));
            // Connections may come between chunks.
            assert!(matches!(
                inbound.receive(&connection("b"), 1),
                Ok(Delivery::Connection { .. })
            ));
        }
        assert_eq!(inbound.receive(&last, 0), Ok(Delivery::AppState(blob)));
        let sent = inbound.received();
        assert_eq!(sent, 1 + 2 * chunks.len() as u64 + 1);
        assert_eq!(inbound.close(), Ending::Abandoned { received: sent });
        assert_eq!(inbound.receive(&end(sent), 0), Ok(Delivery::End));
        assert_eq!(inbound.received(), sent + 1);
        assert_eq!(inbound.close(), Ending::Finished);
    }

    #[test]
    fn an_empty_stream_can_finish() {
        let mut inbound = Inbound::new();
        assert_eq!(inbound.close(), Ending::Abandoned { received: 0 });
        assert_eq!(inbound.receive(&end(0), 0), Ok(Delivery::End));
        assert_eq!(inbound.close(), Ending::Finished);
    }

    /// Feeds `before`, then checks that `bad` is refused with `expected`,
    /// counts nothing, and that the error sticks even for a good message.
    fn refused(before: &[(Vec<u8>, usize)], bad: (&[u8], usize), expected: StreamError) {
        let mut inbound = Inbound::new();
        for (message, fds) in before {
            inbound.receive(message, *fds).unwrap();
        }
        let count = inbound.received();
        assert_eq!(inbound.receive(bad.0, bad.1), Err(expected.clone()));
        assert_eq!(inbound.received(), count);
        assert_eq!(inbound.receive(&connection("ok"), 1), Err(expected.clone()));
        assert_eq!(inbound.received(), count);
        assert!(!expected.to_string().is_empty());
    }

    #[test]
    fn the_wrong_number_of_fds_is_refused() {
        for (message, fds, kind) in [
            (connection("a"), 0, Kind::Connection),
            (connection("a"), 2, Kind::Connection),
            (chunk(1, 0, b"x"), 1, Kind::AppState),
            (end(0), 1, Kind::End),
        ] {
            refused(
                &[],
                (&message, fds),
                StreamError::WrongFds {
                    kind,
                    expected: kind.fds(),
                    received: fds,
                },
            );
        }
    }

    #[test]
    fn undecodable_messages_are_refused() {
        refused(
            &[],
            (&[9, 1], 1),
            StreamError::Wire(WireError::UnsupportedVersion { found: 9 }),
        );
        refused(&[], (&[], 0), StreamError::Wire(WireError::Empty));
    }

    #[test]
    fn acknowledgements_are_for_the_other_direction() {
        refused(
            &[],
            (&bytes(Message::Ack { received: 0 }), 0),
            StreamError::WrongDirection { kind: Kind::Ack },
        );
    }

    #[test]
    fn nothing_follows_the_end_marker() {
        refused(
            &[(end(0), 0)],
            (&connection("late"), 1),
            StreamError::AfterEnd {
                kind: Kind::Connection,
            },
        );
        refused(
            &[(end(0), 0)],
            (&end(1), 0),
            StreamError::AfterEnd { kind: Kind::End },
        );
    }

    #[test]
    fn the_end_marker_must_count_what_arrived() {
        refused(
            &[(connection("a"), 1)],
            (&end(2), 0),
            StreamError::EndCount {
                sent: 2,
                received: 1,
            },
        );
        refused(
            &[(connection("a"), 1)],
            (&end(0), 0),
            StreamError::EndCount {
                sent: 0,
                received: 1,
            },
        );
    }

    #[test]
    fn application_state_chunks_must_follow_each_other() {
        refused(
            &[(chunk(4, 0, b"ab"), 0)],
            (&chunk(4, 3, b"d"), 0),
            StreamError::AppStateOutOfOrder {
                expected: 2,
                offset: 3,
            },
        );
        refused(
            &[],
            (&chunk(4, 2, b"cd"), 0),
            StreamError::AppStateOutOfOrder {
                expected: 0,
                offset: 2,
            },
        );
        refused(
            &[(chunk(4, 0, b"ab"), 0)],
            (&chunk(5, 2, b"cd"), 0),
            StreamError::AppStateTotalChanged { was: 4, now: 5 },
        );
        refused(
            &[(chunk(2, 0, b"ab"), 0)],
            (&chunk(2, 0, b"ab"), 0),
            StreamError::AppStateTwice,
        );
        refused(
            &[(chunk(0, 0, b""), 0)],
            (&chunk(0, 0, b""), 0),
            StreamError::AppStateTwice,
        );
        refused(
            &[(chunk(4, 0, b"ab"), 0)],
            (&end(1), 0),
            StreamError::AppStateUnfinished {
                received: 2,
                total: 4,
            },
        );
    }

    #[test]
    fn acknowledgements_count_up_to_what_was_sent() {
        let ack = |received| bytes(Message::Ack { received });
        let mut tracker = AckTracker::new();
        assert_eq!(tracker.receive(&ack(0), 0, 5), Ok(None));
        assert_eq!(tracker.receive(&ack(2), 0, 5), Ok(Some(2)));
        assert_eq!(tracker.receive(&ack(2), 0, 5), Ok(None));
        assert_eq!(tracker.receive(&ack(5), 0, 5), Ok(Some(5)));
        assert_eq!(tracker.acked(), 5);

        let bad: [(Vec<u8>, usize, StreamError); 5] = [
            (ack(6), 0, StreamError::AckAhead { acked: 6, sent: 5 }),
            (ack(4), 0, StreamError::AckBackwards { was: 5, now: 4 }),
            (
                ack(5),
                1,
                StreamError::WrongFds {
                    kind: Kind::Ack,
                    expected: 0,
                    received: 1,
                },
            ),
            (
                connection("a"),
                1,
                StreamError::WrongDirection {
                    kind: Kind::Connection,
                },
            ),
            (vec![1], 0, StreamError::Wire(WireError::NoKind)),
        ];
        for (message, fds, expected) in bad {
            let mut tracker = AckTracker::new();
            tracker.receive(&ack(5), 0, 5).unwrap();
            assert_eq!(tracker.receive(&message, fds, 5), Err(expected.clone()));
            // Sticky, and the count stays.
            assert_eq!(tracker.receive(&ack(5), 0, 5), Err(expected));
            assert_eq!(tracker.acked(), 5);
        }
    }
}
