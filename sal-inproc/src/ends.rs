//! How a stream's two directions stand beyond its bytes: what `poll`
//! reports as `POLLRDHUP`, `POLLHUP` and `POLLERR`, and the error a reset
//! leaves to be reported once, as a TCP socket's `sk_err`.
//!
//! The core sets the facts under its lock at each refresh of the stream
//! (the peer's end of stream, a reset, this end's shutdowns); the
//! application's calls read them without the lock, and mark the reset's
//! error taken once some call reported it. Every fact only ever turns on,
//! so a reader that sees one can act on it at once.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::Error;

/// The peer's end of stream arrived.
const PEER_FINISHED: u8 = 1;
/// The flow was reset or given up on (a failed connect included).
const RESET: u8 = 2;
/// The application shut its reading down.
const READ_SHUT: u8 = 4;
/// The application shut its writing down.
const WRITE_SHUT: u8 = 8;
/// A call reported the reset's error (or `SO_ERROR` took it).
const ERROR_TAKEN: u8 = 16;
/// The reset came after the peer's end of stream while this end still
/// sent (TCP's `CLOSE_WAIT`): its error is `EPIPE`, fixed then.
const RESET_AFTER_END: u8 = 32;

/// What `poll` reports of a stream beyond readable and writable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ends {
    /// Reads have reached, or will reach once the bytes queued are read,
    /// an end: the peer's end of stream, a reset, or this end's
    /// `shutdown(SHUT_RD)` (`POLLRDHUP`).
    pub read_closed: bool,
    /// Both directions are over (`POLLHUP`): a reset, or reading closed
    /// and this end's writing shut down.
    pub hung_up: bool,
    /// An error waits to be reported by the next call (`POLLERR`): a reset
    /// no call has told of yet.
    pub error: bool,
}

/// Which of the [`Ends`] a lazily made eventfd mirrors (see
/// [`crate::Stream::ends_fd`]): the one a `poll` that asks for neither
/// input nor output waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndsSignal {
    /// Readable while [`Ends::hung_up`] (an error implies it).
    HungUp,
    /// Readable while [`Ends::read_closed`] (a hang-up implies it).
    ReadClosed,
}

impl EndsSignal {
    /// Both, as array indices.
    pub(crate) const ALL: [EndsSignal; 2] = [EndsSignal::HungUp, EndsSignal::ReadClosed];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether `ends` raise it.
    pub(crate) fn raised_by(self, ends: Ends) -> bool {
        match self {
            EndsSignal::HungUp => ends.hung_up,
            EndsSignal::ReadClosed => ends.read_closed,
        }
    }
}

/// The facts, shared by the core's entry of a stream and the
/// [`crate::Stream`].
#[derive(Debug, Default)]
pub(crate) struct EndsCell(AtomicU8);

/// The facts the core knows of a stream at a refresh.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Facts {
    pub(crate) peer_finished: bool,
    pub(crate) reset: bool,
    pub(crate) read_shut: bool,
    pub(crate) write_shut: bool,
}

impl EndsCell {
    /// Notes what the core knows now (facts only turn on).
    pub(crate) fn note(&self, facts: Facts) {
        let bits = [
            (facts.peer_finished, PEER_FINISHED),
            (facts.reset, RESET),
            (facts.read_shut, READ_SHUT),
            (facts.write_shut, WRITE_SHUT),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |bits, (_, bit)| bits | bit);
        let known = self.0.load(Ordering::Relaxed);
        if bits & !known == 0 {
            return;
        }
        // Which error a reset leaves is settled when it comes, as TCP's
        // `tcp_reset` sets it: a later `SHUT_WR` does not change it.
        let all = known | bits;
        let new_reset = bits & RESET != 0 && known & RESET == 0;
        let after_end = all & PEER_FINISHED != 0 && all & WRITE_SHUT == 0;
        let bits = match new_reset && after_end {
            true => bits | RESET_AFTER_END,
            false => bits,
        };
        self.0.fetch_or(bits, Ordering::AcqRel);
    }

    /// What `poll` reports now.
    pub(crate) fn ends(&self) -> Ends {
        ends_of(self.0.load(Ordering::Acquire))
    }

    /// Marks the reset's error reported; whether it was not yet (the
    /// caller reports it then).
    pub(crate) fn take_error(&self) -> bool {
        self.0.fetch_or(ERROR_TAKEN, Ordering::AcqRel) & ERROR_TAKEN == 0
    }

    /// The error a reset leaves, as TCP's: `EPIPE` once the peer's end of
    /// stream came while this end still sent (a reset in `CLOSE_WAIT`),
    /// else `ECONNRESET`.
    pub(crate) fn reset_error(&self) -> Error {
        match self.0.load(Ordering::Acquire) & RESET_AFTER_END != 0 {
            true => Error::ResetAfterEnd,
            false => Error::Reset,
        }
    }

    /// Leaves the reset's error for the next call again (a batch of
    /// reads that ended on it after reading something, as Linux keeps a
    /// batch's later error for the socket's next call).
    pub(crate) fn untake_error(&self) {
        self.0.fetch_and(!ERROR_TAKEN, Ordering::AcqRel);
    }
}

/// [`Ends`] from the bits, as Linux's `tcp_poll` reads a socket: a reset
/// shuts both directions (`POLLRDHUP` and `POLLHUP`), and its error
/// stands until taken.
fn ends_of(bits: u8) -> Ends {
    let on = |bit| bits & bit != 0;
    let read_closed = on(PEER_FINISHED) || on(RESET) || on(READ_SHUT);
    Ends {
        read_closed,
        hung_up: on(RESET) || (read_closed && on(WRITE_SHUT)),
        error: on(RESET) && !on(ERROR_TAKEN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_read_as_tcp_poll_reads_a_socket() {
        let cell = EndsCell::default();
        assert_eq!(cell.ends(), Ends::default());
        cell.note(Facts {
            write_shut: true,
            ..Facts::default()
        });
        assert_eq!(cell.ends(), Ends::default(), "a half-close is no hang-up");
        cell.note(Facts {
            peer_finished: true,
            ..Facts::default()
        });
        let both = cell.ends();
        assert!(both.read_closed && both.hung_up && !both.error, "{both:?}");
        let reset = EndsCell::default();
        reset.note(Facts {
            reset: true,
            ..Facts::default()
        });
        assert_eq!(
            reset.ends(),
            Ends {
                read_closed: true,
                hung_up: true,
                error: true
            }
        );
        assert!(reset.take_error(), "the first taker reports it");
        assert!(!reset.take_error(), "once");
        assert!(!reset.ends().error && reset.ends().hung_up);
        reset.untake_error();
        assert!(reset.ends().error, "left for the next call");
        // The error a reset leaves is settled as it comes.
        let after_end = EndsCell::default();
        after_end.note(Facts {
            peer_finished: true,
            reset: true,
            ..Facts::default()
        });
        after_end.note(Facts {
            write_shut: true,
            ..Facts::default()
        });
        assert!(matches!(after_end.reset_error(), Error::ResetAfterEnd));
        // The same when the FIN and the reset come in separate refreshes;
        // a reset after this end's SHUT_WR is ECONNRESET.
        let apart = EndsCell::default();
        let shut_first = EndsCell::default();
        for (cell, write_shut) in [(&apart, false), (&shut_first, true)] {
            cell.note(Facts {
                peer_finished: true,
                write_shut,
                ..Facts::default()
            });
            cell.note(Facts {
                reset: true,
                ..Facts::default()
            });
        }
        assert!(matches!(apart.reset_error(), Error::ResetAfterEnd));
        assert!(matches!(shut_first.reset_error(), Error::Reset));
        assert!(matches!(reset.reset_error(), Error::Reset));
        let shut = EndsCell::default();
        shut.note(Facts {
            read_shut: true,
            ..Facts::default()
        });
        let ends = shut.ends();
        assert!(ends.read_closed && !ends.hung_up, "{ends:?}");
        assert!(EndsSignal::ReadClosed.raised_by(ends) && !EndsSignal::HungUp.raised_by(ends));
    }
}
