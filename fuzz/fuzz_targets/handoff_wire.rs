//! Fuzzes the handoff channel's wire format and message order, whose bytes
//! come from another generation of the process.
//!
//! Input layout: one mode byte, then
//! - mode 0: one message, decoded; what decodes must encode back to itself;
//! - mode 1: fields to build a message from, encoded; what encodes must
//!   decode back to the same message;
//! - mode 2: a stream of messages, each `[fds, len_lo, len_hi, bytes...]`,
//!   fed to the receiving side (and, as acknowledgements, to the sending
//!   side), whose answers are checked against the rules;
//! - mode 3: an application state blob split into chunks, with connections
//!   between them, which must arrive whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless::fuzz_bridge::{
    app_state_chunks, check_listener_name, decode, AckTracker, Delivery, Ending, Inbound, Kind,
    Message, StreamError, WireError, MAX_APP_STATE_LEN, MAX_CHUNK_LEN, MAX_CONNECTION_STATE_LEN,
    MAX_LISTENER_NAME_LEN, MAX_MESSAGE_LEN, VERSION,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => decode_one(rest),
        1 => encode_one(rest),
        2 => stream(rest),
        _ => blob_between_connections(rest),
    }
});

fn decode_one(bytes: &[u8]) {
    match decode(bytes) {
        Ok(message) => {
            check_fields(&message);
            // One encoding per message: the bytes come back exactly.
            let mut again = Vec::new();
            message
                .encode(&mut again)
                .expect("a decoded message encodes");
            assert_eq!(again, bytes);
        }
        Err(e) => check_error(&e, bytes),
    }
}

fn encode_one(data: &[u8]) {
    let mut r = Bytes(data);
    let message = match r.u8() % 4 {
        0 => {
            let name_len = usize::from(r.u8());
            let Ok(listener) = std::str::from_utf8(r.take(name_len)) else {
                return;
            };
            let state_len = usize::from(r.u16()) % (MAX_CONNECTION_STATE_LEN + 2);
            Message::Connection {
                listener,
                state: r.take(state_len),
            }
        }
        1 => Message::AppState {
            total: r.u32(),
            offset: r.u32(),
            chunk: r.0,
        },
        2 => Message::End { sent: r.u64() },
        _ => Message::Ack { received: r.u64() },
    };
    let mut bytes = vec![0xAA];
    match message.encode(&mut bytes) {
        Ok(()) => {
            assert!(bytes.len() <= MAX_MESSAGE_LEN);
            assert_eq!(bytes[0], VERSION);
            assert_eq!(decode(&bytes), Ok(message));
        }
        Err(e) => {
            assert!(bytes.is_empty(), "a failed encode leaves nothing behind");
            assert!(!e.to_string().is_empty());
            if let Message::Connection { listener, state } = message {
                let name_ok = check_listener_name(listener.as_bytes()).is_ok();
                assert!(!name_ok || state.len() > MAX_CONNECTION_STATE_LEN, "{e}");
            }
        }
    }
}

fn stream(data: &[u8]) {
    let mut r = Bytes(data);
    let sent = r.u64() % 64;
    let mut inbound = Inbound::new();
    let mut acks = AckTracker::new();
    let mut error: Option<StreamError> = None;
    let mut ack_error: Option<StreamError> = None;
    let mut ended = false;
    let mut blobs = 0;
    while !r.0.is_empty() {
        let fds = usize::from(r.u8() % 4);
        let len = usize::from(r.u16());
        let bytes = r.take(len);

        let before = inbound.received();
        let result = inbound.receive(bytes, fds);
        match (&error, result) {
            (Some(e), result) => assert_eq!(result.as_ref(), Err(e), "errors stick"),
            (None, Err(e)) => {
                assert_eq!(inbound.received(), before);
                assert!(!e.to_string().is_empty());
                error = Some(e);
            }
            (None, Ok(delivery)) => {
                assert_eq!(inbound.received(), before + 1);
                assert!(!ended, "nothing is taken after the end marker");
                let kind = decode(bytes).expect("taken means decoded").kind();
                assert_eq!(kind.fds(), fds);
                match delivery {
                    Delivery::Connection { listener, state } => {
                        assert_eq!(kind, Kind::Connection);
                        assert!(check_listener_name(listener.as_bytes()).is_ok());
                        assert!(state.len() <= MAX_CONNECTION_STATE_LEN);
                    }
                    Delivery::AppStateChunk => assert_eq!(kind, Kind::AppState),
                    Delivery::AppState(blob) => {
                        assert_eq!(kind, Kind::AppState);
                        assert!(blob.len() <= MAX_APP_STATE_LEN);
                        blobs += 1;
                        assert_eq!(blobs, 1, "one application state per channel");
                    }
                    Delivery::End => {
                        assert_eq!(kind, Kind::End);
                        ended = true;
                    }
                }
            }
        }

        // The same bytes, read by the sending side as acknowledgements.
        let acked = acks.acked();
        match (&ack_error, acks.receive(bytes, fds, sent)) {
            (Some(e), result) => assert_eq!(result.as_ref(), Err(e)),
            (None, Err(e)) => {
                assert_eq!(acks.acked(), acked);
                ack_error = Some(e);
            }
            (None, Ok(grew)) => {
                assert!(matches!(decode(bytes), Ok(Message::Ack { .. })));
                assert!(acks.acked() >= acked && acks.acked() <= sent);
                assert_eq!(grew, (acks.acked() > acked).then_some(acks.acked()));
            }
        }
    }
    match inbound.close() {
        Ending::Finished => assert!(ended),
        Ending::Abandoned { received } => {
            assert!(!ended);
            assert_eq!(received, inbound.received());
        }
    }
}

fn blob_between_connections(data: &[u8]) {
    let Some((&every, blob)) = data.split_first() else {
        return;
    };
    // A connection before every `every`-th chunk.
    let every = usize::from(every % 4) + 1;
    let mut inbound = Inbound::new();
    let mut buf = Vec::new();
    let mut whole = None;
    let mut connections = 0;
    for (i, chunk) in app_state_chunks(blob).unwrap().enumerate() {
        if let Message::AppState { chunk: c, .. } = chunk {
            assert!(c.len() <= MAX_CHUNK_LEN);
        }
        if i % every == 0 {
            let conn = Message::Connection {
                listener: "between",
                state: &blob[..blob.len().min(8)],
            };
            conn.encode(&mut buf).unwrap();
            assert!(matches!(
                inbound.receive(&buf, 1),
                Ok(Delivery::Connection { .. })
            ));
            connections += 1;
        }
        chunk.encode(&mut buf).unwrap();
        match inbound.receive(&buf, 0).unwrap() {
            Delivery::AppState(b) => whole = Some(b),
            Delivery::AppStateChunk => assert!(whole.is_none()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(whole.as_deref(), Some(blob));
    let sent = inbound.received();
    assert!(sent > connections);
    Message::End { sent }.encode(&mut buf).unwrap();
    assert_eq!(inbound.receive(&buf, 0), Ok(Delivery::End));
    assert_eq!(inbound.close(), Ending::Finished);
}

/// What a decoded message promises.
fn check_fields(message: &Message<'_>) {
    match *message {
        Message::Connection { listener, state } => {
            assert!(!listener.is_empty() && listener.len() <= MAX_LISTENER_NAME_LEN);
            assert!(!listener.contains(':'));
            assert!(listener.bytes().all(|b| (b' '..=b'~').contains(&b)));
            assert!(state.len() <= MAX_CONNECTION_STATE_LEN);
        }
        Message::AppState {
            total,
            offset,
            chunk,
        } => {
            assert!(total as usize <= MAX_APP_STATE_LEN);
            assert!(u64::from(offset) + chunk.len() as u64 <= u64::from(total));
            assert!(chunk.len() <= MAX_CHUNK_LEN);
            assert!(!chunk.is_empty() || total == 0);
        }
        Message::End { .. } | Message::Ack { .. } => {}
    }
}

/// An error is about the bytes it was given.
fn check_error(e: &WireError, bytes: &[u8]) {
    assert!(!e.to_string().is_empty());
    match e {
        WireError::Empty => assert!(bytes.is_empty()),
        WireError::TooLong { len } => assert_eq!(*len, bytes.len()),
        WireError::UnsupportedVersion { found } => {
            assert_eq!(bytes[0], *found);
            assert_ne!(*found, VERSION);
        }
        WireError::NoKind => assert_eq!(bytes, [VERSION]),
        WireError::UnknownKind { found } => assert_eq!(bytes[1], *found),
        WireError::Short { len, needed, .. } => {
            assert_eq!(*len, bytes.len());
            assert!(needed > len);
        }
        WireError::Trailing { extra, .. } => assert!(*extra > 0 && *extra < bytes.len()),
        WireError::BadListenerName { name, .. } => {
            assert!(name.len() <= MAX_LISTENER_NAME_LEN);
            assert!(check_listener_name(name).is_err());
        }
        _ => {}
    }
}

/// Reads fields from the fuzzer's bytes, with zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut array = [0; N];
        let head = self.take(N);
        array[..head.len()].copy_from_slice(head);
        array
    }

    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}
