//! Socket timeouts (`SO_SNDTIMEO`, `SO_RCVTIMEO`) as Linux takes them.
//!
//! The shim waits for a connect in flight itself (on a copy of the
//! placeholder, see `ops::await_parked`) where TCP's wait would be bounded
//! by the socket's timeout, so it reads the program's value as the kernel
//! does (`sock_set_timeout`): a negative one is no wait at all, zero is
//! none, and the rest counts in jiffies (`HZ` a second, the microseconds
//! rounded up to a whole jiffy), where one too long to count
//! (`LONG_MAX / HZ - 1` s or more, about 9.2e15 s at 1000 Hz, 3.7e16 s at
//! 250) is none too. `getsockopt` reads a timeout back from its jiffies
//! (`sock_get_timeout`), which is what the shim answers while the
//! placeholder's own receive timeout is turned off.
//!
//! `HZ` is the kernel's and not told to programs (`sysconf(_SC_CLK_TCK)` is
//! `USER_HZ`, always 100): [`kernel_hz`] measures it once, as the time a
//! receive timeout of 1 us reads back as (one jiffy).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::real;

const USEC_PER_SEC: u64 = 1_000_000;

/// A timeout the program gave a socket, as the kernel keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// No limit (`MAX_SCHEDULE_TIMEOUT`).
    None,
    /// This many jiffies (0 for a negative timeout: no wait at all).
    Jiffies(u64),
}

impl Timeout {
    /// What the kernel makes of the `struct timeval` in `value` (the bytes
    /// the program passed to `setsockopt`) with `hz` jiffies a second;
    /// `None` if they are no valid timeval (the kernel refused those, so
    /// the program never set them).
    pub(crate) fn from_option(value: &[u8], hz: u64) -> Option<Timeout> {
        if value.len() < std::mem::size_of::<libc::timeval>() || hz == 0 {
            return None;
        }
        // SAFETY: `value` holds at least one `timeval`'s bytes, read
        // without regard to alignment.
        let tv = unsafe { std::ptr::read_unaligned(value.as_ptr().cast::<libc::timeval>()) };
        let usec = u64::try_from(tv.tv_usec)
            .ok()
            .filter(|&usec| usec < USEC_PER_SEC)?;
        let Ok(sec) = u64::try_from(tv.tv_sec) else {
            return Some(Timeout::Jiffies(0));
        };
        // As `sock_set_timeout`: `tv_sec < MAX_SCHEDULE_TIMEOUT / HZ - 1`.
        let countable = (i64::MAX as u64 / hz).saturating_sub(1);
        if (sec == 0 && usec == 0) || sec >= countable {
            return Some(Timeout::None);
        }
        // `DIV_ROUND_UP(tv_usec, USEC_PER_SEC / HZ)`, in the kernel's
        // integer steps.
        let step = (USEC_PER_SEC / hz).max(1);
        Some(Timeout::Jiffies(sec * hz + usec.div_ceil(step)))
    }

    /// How long a wait with this timeout may take (`None`: no limit).
    pub(crate) fn limit(self, hz: u64) -> Option<Duration> {
        match self {
            Timeout::None => None,
            Timeout::Jiffies(jiffies) => {
                let nanos = u128::from(jiffies) * 1_000_000_000 / u128::from(hz.max(1));
                let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
                Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
            }
        }
    }

    /// The `struct timeval` `getsockopt` reads back (`{0, 0}` for none).
    pub(crate) fn read_back(self, hz: u64) -> libc::timeval {
        let hz = hz.max(1);
        match self {
            Timeout::None => libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            Timeout::Jiffies(jiffies) => libc::timeval {
                tv_sec: (jiffies / hz) as libc::time_t,
                tv_usec: ((jiffies % hz) * USEC_PER_SEC / hz) as libc::suseconds_t,
            },
        }
    }
}

/// A timeout option's value as `getsockopt` reads it back (in whole
/// jiffies of the kernel's clock); `None` if it is not a timeout.
pub(crate) fn read_back_option(value: &[u8]) -> Option<libc::timeval> {
    let hz = kernel_hz();
    Some(Timeout::from_option(value, hz)?.read_back(hz))
}

/// The kernel's clock tick rate, measured once (0 until then).
static HZ: AtomicU64 = AtomicU64::new(0);

/// The kernel's `HZ`: what a receive timeout of 1 us reads back as, on a
/// socket made for the purpose, is one jiffy. Makes and closes a
/// descriptor with libc's own calls the first time (never this shim's
/// `close`, so it may run under the table lock). 1000 if that cannot be
/// measured (no descriptor free, `EMFILE`), and then measured again next
/// time: kept, a guess would round every timeout of the process wrongly
/// for good.
pub(crate) fn kernel_hz() -> u64 {
    match HZ.load(Ordering::Relaxed) {
        0 => match measure_hz() {
            Some(hz) => {
                HZ.store(hz, Ordering::Relaxed);
                hz
            }
            None => 1000,
        },
        hz => hz,
    }
}

fn measure_hz() -> Option<u64> {
    // SAFETY: no pointers; the socket is ours alone and closed below.
    let fd = unsafe { real::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let one = libc::timeval {
        tv_sec: 0,
        tv_usec: 1,
    };
    let mut back = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: `one` and `back` are valid timevals for the calls, `len`
    // their size; `fd` is closed once, by libc's own `close`.
    let usec = unsafe {
        let size = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        let set = real::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&one as *const libc::timeval).cast(),
            size,
        );
        let got = real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&mut back as *mut libc::timeval).cast(),
            &mut len,
        );
        real::close(fd);
        (set == 0 && got == 0 && back.tv_sec == 0).then_some(back.tv_usec)
    }?;
    let usec = u64::try_from(usec).ok().filter(|&usec| usec > 0)?;
    Some((USEC_PER_SEC + usec / 2) / usec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(sec: i64, usec: i64) -> Vec<u8> {
        let tv = libc::timeval {
            tv_sec: sec,
            tv_usec: usec,
        };
        // SAFETY: a timeval is plain bytes.
        unsafe {
            std::slice::from_raw_parts(
                (&tv as *const libc::timeval).cast::<u8>(),
                std::mem::size_of::<libc::timeval>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn zero_and_too_long_are_none_negative_is_no_wait() {
        for hz in [100, 250, 300, 1000] {
            assert_eq!(Timeout::from_option(&bytes(0, 0), hz), Some(Timeout::None));
            assert_eq!(
                Timeout::from_option(&bytes(-1, 0), hz),
                Some(Timeout::Jiffies(0))
            );
            assert_eq!(
                Timeout::from_option(&bytes(i64::MAX, 0), hz),
                Some(Timeout::None)
            );
            let edge = (i64::MAX / hz as i64) - 1;
            assert_eq!(
                Timeout::from_option(&bytes(edge, 0), hz),
                Some(Timeout::None)
            );
            assert!(matches!(
                Timeout::from_option(&bytes(edge - 1, 999_999), hz),
                Some(Timeout::Jiffies(_))
            ));
        }
        // 1e17 s is none at any HZ; 1e16 s only from 923 Hz up.
        assert_eq!(
            Timeout::from_option(&bytes(100_000_000_000_000_000, 0), 100),
            Some(Timeout::None)
        );
        assert_eq!(
            Timeout::from_option(&bytes(10_000_000_000_000_000, 0), 1000),
            Some(Timeout::None)
        );
        assert!(matches!(
            Timeout::from_option(&bytes(10_000_000_000_000_000, 0), 250),
            Some(Timeout::Jiffies(_))
        ));
    }

    #[test]
    fn microseconds_round_up_to_a_jiffy_and_read_back_so() {
        let tv = |t: Timeout, hz| {
            let back = t.read_back(hz);
            (back.tv_sec, back.tv_usec)
        };
        // As Linux at 250 Hz: 1 us reads 4 ms, 1.234567 s reads 1.236 s.
        let one = Timeout::from_option(&bytes(0, 1), 250).unwrap();
        assert_eq!(one, Timeout::Jiffies(1));
        assert_eq!(tv(one, 250), (0, 4000));
        assert_eq!(one.limit(250), Some(Duration::from_millis(4)));
        let odd = Timeout::from_option(&bytes(1, 234_567), 250).unwrap();
        assert_eq!(tv(odd, 250), (1, 236_000));
        let exact = Timeout::from_option(&bytes(0, 200_000), 1000).unwrap();
        assert_eq!(tv(exact, 1000), (0, 200_000));
        assert_eq!(exact.limit(1000), Some(Duration::from_millis(200)));
        assert_eq!(tv(Timeout::None, 1000), (0, 0));
        assert_eq!(tv(Timeout::Jiffies(0), 1000), (0, 0));
        assert_eq!(Timeout::None.limit(1000), None);
    }

    #[test]
    fn bad_values_are_no_timeout() {
        assert_eq!(Timeout::from_option(&[0; 8], 1000), None);
        assert_eq!(Timeout::from_option(&bytes(1, 1_000_000), 1000), None);
        assert_eq!(Timeout::from_option(&bytes(1, -1), 1000), None);
    }

    #[test]
    fn the_measured_rate_is_a_kernel_s() {
        assert!(
            [100, 250, 300, 1000].contains(&kernel_hz()),
            "{}",
            kernel_hz()
        );
    }
}
