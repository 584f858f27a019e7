//! Fuzzes the control-socket framing and messages sald and its clients
//! read from each other: `frame_len` on the length prefix, then
//! `decode_body` as a request, a response and an event. Whatever decodes
//! must encode as a frame and decode to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sal_control::{decode_body, encode_frame, frame_len, ControlEvent, Request, Response};
use serde::{de::DeserializeOwned, Serialize};

fuzz_target!(|data: &[u8]| {
    if let Some(prefix) = data.first_chunk::<4>() {
        if let Ok(len) = frame_len(*prefix) {
            assert!(len <= sal_control::MAX_FRAME);
        }
    }
    round_trip::<Request>(data);
    round_trip::<Response>(data);
    round_trip::<ControlEvent>(data);
});

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(body: &[u8]) {
    let Ok(value) = decode_body::<T>(body) else {
        return;
    };
    let Ok(frame) = encode_frame(&value) else {
        return;
    };
    let len = frame_len(frame[..4].try_into().expect("a length prefix")).expect("a valid length");
    assert_eq!(len, frame.len() - 4);
    let again: T = decode_body(&frame[4..]).expect("an encoded frame decodes");
    assert_eq!(again, value);
}
