//! A simulator node that records the SAL packets crossing it, for tests
//! that classify what a TCP sender did and when (timeouts, probes,
//! rewinds) from the outside, as a packet capture would.

use std::cell::RefCell;
use std::rc::Rc;

use rand::rngs::SmallRng;
use sal::wire::{SalPacket, BASE_HEADER_LEN};
use sal::Locator;
use sal_sim::{Node, Packet, Verdict};
use smoltcp::time::Instant;
use smoltcp::wire::TcpPacket;

/// A TCP segment or a SAL control message seen by a [`Tap`].
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub at: Instant,
    /// The packet's source.
    pub src: Locator,
    /// Recorded where the packet arrived, else where it was sent.
    pub delivered: bool,
    /// The segment's numbers (0 without a segment, `ack` 0 without ACK).
    pub seq: u32,
    pub ack: u32,
    /// Payload bytes.
    pub len: u32,
    pub syn: bool,
    pub fin: bool,
    /// A SAL control message (a packet with extensions).
    pub control: bool,
    /// The packet carries a TCP segment.
    pub tcp: bool,
}

impl Seen {
    /// Sequence space the segment takes: its payload, plus one for a SYN
    /// and one for a FIN.
    pub fn seq_len(&self) -> u32 {
        self.len + u32::from(self.syn) + u32::from(self.fin)
    }

    /// A TCP segment of the flow's data stream, outside control messages.
    pub fn is_data_segment(&self) -> bool {
        self.tcp && !self.control
    }
}

/// What the taps of one path record, in order.
pub type Log = Rc<RefCell<Vec<Seen>>>;

/// Records every packet that carries a TCP segment or a control message
/// into its log, and passes everything.
#[derive(Debug)]
pub struct Tap {
    pub log: Log,
    /// Whether this tap sits at the receiving end of the path.
    pub delivered: bool,
}

impl Node for Tap {
    fn process(&mut self, packet: &Packet, now: Instant, _: &mut SmallRng) -> Verdict {
        if let Some(seen) = parse(packet, now, self.delivered) {
            self.log.borrow_mut().push(seen);
        }
        Verdict::Pass(now)
    }
}

/// What a tap records of a SAL packet: its TCP segment or its control
/// message, if it has either.
pub fn parse(packet: &Packet, at: Instant, delivered: bool) -> Option<Seen> {
    let sal = SalPacket::new_checked(&packet.payload[..]).ok()?;
    let control = sal.header_len() > BASE_HEADER_LEN;
    let src = packet.src;
    let Some(tcp) = (sal.protocol() == 6)
        .then(|| TcpPacket::new_checked(&packet.payload[sal.header_len()..]).ok())
        .flatten()
    else {
        return control.then_some(Seen {
            at,
            src,
            delivered,
            seq: 0,
            ack: 0,
            len: 0,
            syn: false,
            fin: false,
            control,
            tcp: false,
        });
    };
    Some(Seen {
        at,
        src,
        delivered,
        seq: tcp.seq_number().0 as u32,
        ack: if tcp.ack() {
            tcp.ack_number().0 as u32
        } else {
            0
        },
        len: tcp.payload().len() as u32,
        syn: tcp.syn(),
        fin: tcp.fin(),
        control,
        tcp: true,
    })
}
