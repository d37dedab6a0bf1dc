//! Bytes from a peer -> frames: the length-prefix reader and postcard decoding.
//!
//! Invariants: nothing panics or allocates past the announced limit; `decode_frame` and
//! the stream reader `read_frame` agree on every input; whatever decodes re-encodes to
//! bytes that decode to the same frame.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use teatime_fuzz::wire::{
    FrameError, MAX_FRAME_BYTES, MAX_HANDSHAKE_FRAME_BYTES, decode_frame, encode_frame, read_frame,
};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"))
}

fuzz_target!(|data: &[u8]| {
    // A stream of frames, as a session reads it.
    let mut rest = data;
    let mut reader = data;
    loop {
        let sliced = decode_frame(rest, MAX_FRAME_BYTES);
        let streamed = runtime().block_on(read_frame(&mut reader));
        match (&sliced, &streamed) {
            (Ok(Some((frame, used))), Ok(Some(read))) => {
                assert_eq!(frame, read, "decode_frame and read_frame disagree");
                assert!(*used >= 4 && *used <= rest.len());
                let bytes = encode_frame(frame).expect("a decoded frame re-encodes");
                let (again, n) = decode_frame(&bytes, MAX_FRAME_BYTES).expect("re-encoded").expect("whole");
                assert_eq!((&again, n), (frame, bytes.len()), "the round trip changed the frame");
                rest = &rest[*used..];
                assert_eq!(rest.len(), reader.len());
            }
            // Not enough bytes: a clean end (before or inside the prefix) or a cut body.
            (Ok(None), Ok(None) | Err(FrameError::Truncated)) => break,
            (Err(FrameError::TooLarge { .. }), Err(FrameError::TooLarge { .. })) => break,
            (Err(FrameError::Malformed(_)), Err(FrameError::Malformed(_))) => break,
            _ => panic!("decode_frame {sliced:?} and read_frame {streamed:?} disagree"),
        }
    }
    // The handshake's tighter limit.
    if let Ok(Some((_, used))) = decode_frame(data, MAX_HANDSHAKE_FRAME_BYTES) {
        assert!(used <= MAX_HANDSHAKE_FRAME_BYTES + 4);
    }
});
