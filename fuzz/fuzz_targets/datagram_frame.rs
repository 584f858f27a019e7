//! Fuzzes `DatagramFrame::decode`, which sald runs on every message an
//! application writes to a datagram socket (and the shim on what sald
//! writes back). Whatever decodes must encode to the very bytes it came
//! from: every frame has one encoding, and anything else is refused.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sal_control::DatagramFrame;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = DatagramFrame::decode(data) else {
        return;
    };
    assert_eq!(frame.encode(), data);
});
