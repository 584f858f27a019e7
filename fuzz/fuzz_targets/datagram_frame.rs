//! Fuzzes `DatagramFrame::decode`, which sald runs on every message an
//! application writes to a datagram socket (and the shim on what sald
//! writes back). Whatever decodes must encode and decode to the same frame.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sal_control::DatagramFrame;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = DatagramFrame::decode(data) else {
        return;
    };
    let encoded = frame.encode();
    assert!(encoded.len() <= data.len() + 1);
    assert_eq!(DatagramFrame::decode(&encoded), Ok(frame));
});
