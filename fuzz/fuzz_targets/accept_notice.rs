//! Fuzzes the accept-queue notices an application reads for each flow
//! sald delivers (`AcceptNotice::decode`, `FlowNotice::decode`). Whatever
//! decodes must encode and decode to the same notice.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sal_control::{AcceptNotice, FlowNotice};

fuzz_target!(|data: &[u8]| {
    if let Some(notice) = AcceptNotice::decode(data) {
        assert_eq!(AcceptNotice::decode(&notice.encode()), Some(notice));
    }
    if let Ok(notice) = FlowNotice::decode(data) {
        assert_eq!(FlowNotice::decode(&notice.encode()), Ok(notice));
    }
});
