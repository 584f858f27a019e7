//! What a socket's loss recovery did, counted: how an operator (and a
//! simulation) tells a path that loses from one that does not, and how
//! the sender found its losses, as Linux's `netstat -s` counters
//! (`TCPTimeouts`, `TCPLossProbes`, `TCPDSACKUndo`...) do.
//!
//! Counted from outside the sender, by the segments it sent, these are
//! guesses: a fast retransmit on RACK's timer and a retransmission
//! timeout are both a resend on a timer. Counted here, where each is
//! decided, they are exact. Sixteen bytes a socket; the host adds each
//! socket's increments into its own counters as it drives the socket.

/// Loss recovery events of one socket since it was created (each wraps
/// at `u32::MAX`; read differences with [`LossCounters::since`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossCounters {
    /// Retransmission timeouts of data (not of the SYN or SYN-ACK).
    pub timeouts: u32,
    /// Fast retransmits: recoveries begun on duplicate ACKs, SACKed data
    /// or RACK's timer.
    pub fast_retransmits: u32,
    /// Tail loss probes sent (`crate::tlp`).
    pub loss_probes: u32,
    /// Window reductions undone because the peer reported every
    /// retransmission since as a duplicate (`crate::undo`).
    pub undos: u32,
}

impl LossCounters {
    /// What was counted between `before` (an earlier reading of the same
    /// socket) and this reading.
    pub fn since(self, before: LossCounters) -> LossCounters {
        LossCounters {
            timeouts: self.timeouts.wrapping_sub(before.timeouts),
            fast_retransmits: self.fast_retransmits.wrapping_sub(before.fast_retransmits),
            loss_probes: self.loss_probes.wrapping_sub(before.loss_probes),
            undos: self.undos.wrapping_sub(before.undos),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_survive_a_wrap() {
        let before = LossCounters {
            timeouts: u32::MAX,
            fast_retransmits: 3,
            loss_probes: 0,
            undos: 7,
        };
        let after = LossCounters {
            timeouts: 1,
            fast_retransmits: 5,
            loss_probes: 1,
            undos: 7,
        };
        assert_eq!(
            after.since(before),
            LossCounters {
                timeouts: 2,
                fast_retransmits: 2,
                loss_probes: 1,
                undos: 0
            }
        );
    }
}
