//! Fuzzes servd's datagram decoder (`controller::servd::wire::decode`),
//! without keys and with one, and the replay guard on what authenticates.
//! Whatever decodes must encode again and decode to the same message.
//!
//! When the low bit of the first byte is set, the rest is taken as a JSON
//! body and tagged with the fuzzing key (stamp from the next 16 bytes), so
//! that the fuzzer gets past the tag into the keyed path; otherwise the
//! bytes are decoded as they are.

#![no_main]

use controller::servd::replay::ReplayGuard;
use controller::servd::wire::{self, Stamp};
use controller::servd::{Key, Keyring};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const SECRET: &[u8] = b"the fuzzing key, 16+ bytes";

fuzz_target!(|data: &[u8]| {
    let key = Key::new("domain", SECRET).expect("a long enough key");
    let keyed = Keyring::with_signing(key.clone());
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        check(data, &Keyring::none());
        check(data, &keyed);
        return;
    }
    let Some((stamp, body)) = rest.split_first_chunk::<16>() else {
        return;
    };
    let mut datagram = b"SRVD\x02\x01".to_vec();
    datagram.extend_from_slice(&key.id());
    datagram.extend_from_slice(stamp);
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("HMAC takes any key");
    mac.update(&datagram);
    mac.update(body);
    datagram.extend_from_slice(&mac.finalize().into_bytes());
    datagram.extend_from_slice(body);
    check(&datagram, &keyed);
});

fn check(datagram: &[u8], keys: &Keyring) {
    let Ok((message, auth)) = wire::decode(datagram, keys) else {
        return;
    };
    let seal = auth.map(|a| (a.key, a.stamp));
    if let Some((key, stamp)) = seal {
        // The guard takes any stamp without panicking, and never the same
        // one twice.
        let mut guard = ReplayGuard::new(4);
        let now = stamp.timestamp_ms;
        let epoch = message.from().epoch;
        if guard.check(key.id(), epoch, stamp, now).is_ok() {
            assert!(guard.check(key.id(), epoch, stamp, now).is_err());
        }
        let _ = guard.check(
            key.id(),
            epoch,
            Stamp {
                sequence: 0,
                ..stamp
            },
            u64::MAX,
        );
    }
    // Re-encoding may not fit (JSON can come out longer); if it does, it
    // must decode to the same message.
    if let Ok(again) = wire::encode(&message, seal) {
        let (decoded, _) = wire::decode(&again, keys).expect("an encoded message decodes");
        assert_eq!(decoded, message);
    }
}
