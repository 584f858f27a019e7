//! D-SACK (RFC 2883): a receiver tells the sender which bytes it received
//! twice, in the first SACK block of the ACK the duplicate draws.
//!
//! A sender cannot otherwise tell a needless retransmission (the original
//! was only delayed, or its ACK was lost, or a timeout fired while the
//! retransmission of a real loss sat in a deep queue) from a needed one,
//! and each needless one cost it a window reduction it keeps. With the
//! duplicate reported, the sender can undo that reduction
//! (`crate::undo`), and a tail loss probe whose original arrived is seen
//! as such (`crate::tlp`).
//!
//! Receiving: [`DuplicateReport`] holds the one duplicate range to report,
//! set when a segment brings bytes already held (below RCV.NXT, or inside
//! an out-of-order range held), and taken by the next ACK sent: as RFC
//! 2883 (section 4) asks, a D-SACK block is reported once. Sending side:
//! [`duplicate_block`] reads the first block of a received SACK option as
//! RFC 2883 (section 4) defines a D-SACK: below the cumulative ACK, or
//! within the second block.

use smoltcp::wire::TcpSeqNumber;

/// The range of a duplicate segment, to lead the next SACK option sent:
/// `[left, right)`, nothing when empty. Eight bytes, no more: a newer
/// duplicate replaces an older one not yet reported (RFC 2883 reports
/// the segment each ACK answers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DuplicateReport {
    left: TcpSeqNumber,
    right: TcpSeqNumber,
}

impl DuplicateReport {
    /// Bytes `[left, right)` arrived that were already received: report
    /// them in the next ACK. An empty or inverted range is ignored.
    pub(crate) fn note(&mut self, left: TcpSeqNumber, right: TcpSeqNumber) {
        if left < right {
            *self = DuplicateReport { left, right };
        }
    }

    /// Whether a duplicate waits to be reported.
    pub(crate) fn is_pending(&self) -> bool {
        self.left < self.right
    }

    /// The block to lead the SACK option of the ACK being built, once.
    pub(crate) fn take(&mut self) -> Option<(u32, u32)> {
        let block = self
            .is_pending()
            .then_some((self.left.0 as u32, self.right.0 as u32));
        *self = DuplicateReport::default();
        block
    }
}

/// The D-SACK block leading a received SACK option, if its first block is
/// one (RFC 2883 section 4): below the cumulative acknowledgement `ack`,
/// or contained in the second block. Such a block names bytes the peer
/// received twice; it says nothing about holes, and is no SACK of new data.
pub(crate) fn duplicate_block(
    ack: TcpSeqNumber,
    blocks: &[Option<(u32, u32)>; 3],
) -> Option<(TcpSeqNumber, TcpSeqNumber)> {
    let seq = |(l, r): (u32, u32)| (TcpSeqNumber(l as i32), TcpSeqNumber(r as i32));
    let (left, right) = seq(blocks[0]?);
    if left >= right {
        return None;
    }
    let below_ack = left < ack;
    let within_second = blocks[1]
        .map(seq)
        .is_some_and(|(l, r)| l <= left && right <= r);
    (below_ack || within_second).then_some((left, right))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: i32) -> TcpSeqNumber {
        TcpSeqNumber(n)
    }

    #[test]
    fn a_duplicate_is_reported_once_and_the_latest_wins() {
        let mut d = DuplicateReport::default();
        assert_eq!(d.take(), None);
        d.note(s(100), s(100));
        assert!(!d.is_pending());
        d.note(s(100), s(200));
        d.note(s(300), s(400));
        assert!(d.is_pending());
        assert_eq!(d.take(), Some((300, 400)));
        assert_eq!(d.take(), None);
    }

    #[test]
    fn the_first_block_is_a_duplicate_below_the_ack_or_within_the_second() {
        let ack = s(1000);
        assert_eq!(
            duplicate_block(ack, &[Some((500, 600)), None, None]),
            Some((s(500), s(600)))
        );
        assert_eq!(
            duplicate_block(ack, &[Some((1200, 1300)), Some((1100, 1400)), None]),
            Some((s(1200), s(1300)))
        );
        // The same range twice: a duplicate of a whole block held.
        assert_eq!(
            duplicate_block(ack, &[Some((1200, 1300)), Some((1200, 1300)), None]),
            Some((s(1200), s(1300)))
        );
        // An ordinary SACK option.
        assert_eq!(
            duplicate_block(ack, &[Some((1200, 1300)), Some((1500, 1600)), None]),
            None
        );
        assert_eq!(duplicate_block(ack, &[None, None, None]), None);
        // Wrapping sequence numbers.
        let ack = s(i32::MIN + 10);
        assert_eq!(
            duplicate_block(
                ack,
                &[Some((i32::MAX as u32 - 9, i32::MIN as u32 + 5)), None, None]
            ),
            Some((s(i32::MAX - 9), s(i32::MIN + 5)))
        );
    }
}
