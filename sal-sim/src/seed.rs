//! The simulation seed, and how a failing run tells you to replay it.
//!
//! Everything random in a simulation (host seeds, loss, jitter, ...) comes
//! from one seed. A test passes its own fixed seed, so runs are the same
//! every time; setting `SIMULATION_SEED` (decimal, or hex with `0x`)
//! overrides it for every network the process builds, to explore other
//! seeds or to replay one. When a test fails while its network is alive,
//! the network prints the seed it ran with as it is dropped.

/// The environment variable that overrides every test's seed.
pub const SEED_VARIABLE: &str = "SIMULATION_SEED";

/// Parses a seed: decimal, or hexadecimal with a `0x` prefix.
pub fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The seed to run with: `SIMULATION_SEED` if set, else `default`.
///
/// # Panics
/// If `SIMULATION_SEED` is set but is not a seed: a typo must not silently
/// run the default.
pub fn seed_or(default: u64) -> u64 {
    match std::env::var(SEED_VARIABLE) {
        Ok(text) => parse_seed(&text)
            .unwrap_or_else(|| panic!("{SEED_VARIABLE}={text:?} is not a u64 (decimal or 0x-hex)")),
        Err(_) => default,
    }
}

/// Prints the seed on drop if the thread is panicking (a test failing).
#[derive(Debug)]
pub(crate) struct SeedGuard(pub u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{SEED_VARIABLE}={} to replay this simulation", self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_decimal_or_hex() {
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed(" 0x2a\n"), Some(42));
        assert_eq!(parse_seed("0XFF"), Some(255));
        assert_eq!(parse_seed("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_seed("-1"), None);
        assert_eq!(parse_seed("0xg"), None);
        assert_eq!(parse_seed(""), None);
    }
}
