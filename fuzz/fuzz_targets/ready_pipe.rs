//! Fuzzes the readiness-pipe reader with whatever a child might write, cut
//! into arbitrary chunks as the pipe might deliver it.
//!
//! Input layout: one byte `k`, then `k % 16` bytes of chunk sizes, then the
//! bytes written on the pipe.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless::fuzz_bridge::{ReadyError, ReadyReader, ReadyStatus, READY_MESSAGE};

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let (sizes, payload) = rest.split_at(rest.len().min(usize::from(k % 16)));

    let mut reader = ReadyReader::new();
    let mut fed = 0;
    let mut first_error: Option<ReadyError> = None;
    let mut step = 0;
    while fed < payload.len() {
        let s = sizes.get(step % sizes.len().max(1)).copied().unwrap_or(7);
        step += 1;
        // An empty read now and then: it must change nothing.
        if s & 0x80 != 0 {
            let before = reader.finish();
            check(&mut reader, &payload[..fed], &[], &mut first_error);
            assert_eq!(reader.finish(), before);
        }
        let len = usize::from(s % 8).max(1).min(payload.len() - fed);
        let chunk = &payload[fed..fed + len];
        fed += len;
        check(&mut reader, &payload[..fed], chunk, &mut first_error);
    }

    // End of file: fine exactly when the whole message, and nothing else,
    // was written.
    match reader.finish() {
        Ok(()) => assert_eq!(payload, READY_MESSAGE),
        Err(ReadyError::ClosedEarly { received }) => {
            assert!(payload.len() < READY_MESSAGE.len());
            assert!(READY_MESSAGE.starts_with(payload));
            assert_eq!(received, payload);
        }
        Err(e) => assert_eq!(Some(e), first_error),
    }
});

/// Feeds `chunk`, `so_far` being everything fed including it, and checks
/// the answer against the message.
fn check(
    reader: &mut ReadyReader,
    so_far: &[u8],
    chunk: &[u8],
    first_error: &mut Option<ReadyError>,
) {
    let result = reader.feed(chunk);
    if let Some(error) = first_error {
        assert_eq!(result.as_ref(), Err(&*error), "errors must stick");
        return;
    }
    match result {
        Ok(ReadyStatus::Ready) => assert_eq!(so_far, READY_MESSAGE),
        Ok(ReadyStatus::Incomplete) => {
            assert!(so_far.len() < READY_MESSAGE.len());
            assert!(READY_MESSAGE.starts_with(so_far));
        }
        Err(e) => {
            assert!(!READY_MESSAGE.starts_with(so_far));
            let ReadyError::Garbage { received } = &e else {
                panic!("feed returned {e:?}");
            };
            assert!(received.len() <= 32);
            assert!(so_far.starts_with(received));
            assert!(!e.to_string().is_empty());
            *first_error = Some(e);
        }
    }
}
