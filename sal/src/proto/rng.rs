//! Where a host's random numbers come from.
//!
//! Flow IDs, nonces, `verno`s and TCP initial sequence numbers are what
//! keeps an off-path attacker from resetting, migrating or hijacking a
//! flow: a nonce that can be predicted is no protection. A client sees
//! several consecutive draws in every SYN-ACK it receives, so the generator
//! must be one whose outputs say nothing about its other outputs: on a real
//! network a host draws from ChaCha12 (`StdRng`) keyed with 256 bits of
//! entropy ([`HostConfig::entropy`]), and so does its SYN-cookie secret.
//! A simulation gives no entropy and draws from a small generator seeded
//! with [`HostConfig::seed`], so that one seed replays one run.

use rand::rngs::{SmallRng, StdRng};
use rand::{Rng, RngCore, SeedableRng};

use super::config::HostConfig;

/// A host's generator (see the module docs).
// One per host: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum HostRng {
    /// Repeatable and predictable: simulations only.
    Seeded(SmallRng),
    /// Cryptographic.
    Secure(StdRng),
}

impl HostRng {
    /// The generator `config` asks for, and the SYN-cookie secret, drawn
    /// independently of it.
    pub(super) fn new(config: &HostConfig) -> (HostRng, [u8; 32]) {
        match config.entropy {
            Some(key) => {
                // Two keys from one: the cookie secret and the generator's
                // own, neither telling anything of the other.
                let mut master = StdRng::from_seed(key);
                let cookie_secret = master.random();
                (
                    HostRng::Secure(StdRng::from_seed(master.random())),
                    cookie_secret,
                )
            }
            None => {
                // A generator of its own for the secret, so that the host's
                // draws do not depend on whether cookies exist.
                let mut secret = SmallRng::seed_from_u64(config.seed ^ 0x5a1c_00c1_e5ec_2e75);
                (
                    HostRng::Seeded(SmallRng::seed_from_u64(config.seed)),
                    secret.random(),
                )
            }
        }
    }
}

impl RngCore for HostRng {
    fn next_u32(&mut self) -> u32 {
        match self {
            HostRng::Seeded(rng) => rng.next_u32(),
            HostRng::Secure(rng) => rng.next_u32(),
        }
    }

    fn next_u64(&mut self) -> u64 {
        match self {
            HostRng::Seeded(rng) => rng.next_u64(),
            HostRng::Secure(rng) => rng.next_u64(),
        }
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        match self {
            HostRng::Seeded(rng) => rng.fill_bytes(dst),
            HostRng::Secure(rng) => rng.fill_bytes(dst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_and_entropy_does_not_follow_the_seed() {
        let seeded = HostConfig::default();
        let draw = |config: &HostConfig| {
            let (mut rng, secret) = HostRng::new(config);
            (rng.next_u64(), secret)
        };
        assert_eq!(draw(&seeded), draw(&seeded), "one seed, one run");
        let keyed = |key: u8| HostConfig {
            entropy: Some([key; 32]),
            ..HostConfig::default()
        };
        assert_eq!(draw(&keyed(1)), draw(&keyed(1)));
        let (one, two) = (draw(&keyed(1)), draw(&keyed(2)));
        assert_ne!(one.0, two.0);
        assert_ne!(one.1, two.1);
        assert_ne!(draw(&keyed(1)).0, draw(&seeded).0, "the seed plays no part");
        let (value, secret) = draw(&keyed(1));
        assert_ne!(&value.to_le_bytes()[..], &secret[..8], "independent draws");
    }
}
