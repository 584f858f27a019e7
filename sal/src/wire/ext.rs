//! SAL header extensions: framing, zero-copy views and `Repr`s per type.
//!
//! Every extension but PAD starts with a 2-byte generic header (type in the high
//! nibble of byte 0, total length in byte 1). [`Extensions`] walks the region
//! after the base header and validates framing and per-type lengths, so the
//! typed views below only ever see slices of the right size.

use std::fmt;
use std::net::Ipv4Addr;

use arrayvec::ArrayVec;

use super::{ensure_room, read_u16, read_u32, Error, Result};
use crate::id::ServiceId;

/// CONTROL is always 20 bytes.
pub const CONTROL_LEN: usize = 20;
/// SERVICE is always 36 bytes.
pub const SERVICE_LEN: usize = 36;
/// ADDRESS without any address: header, reserved, verno, ackno.
pub const ADDRESS_BASE_LEN: usize = 12;
/// SOURCE without any address: header and reserved.
pub const SOURCE_BASE_LEN: usize = 4;
/// WIRE.md caps SOURCE at 20 addresses.
pub const MAX_SOURCE_ADDRS: usize = 20;
/// The most addresses an ADDRESS extension can carry: its length is one byte,
/// so 12 + 4n <= 255, n <= 60. (A bound from the 1020-byte header, 249, would
/// let the length byte wrap on emit and produce a malformed header.)
pub const MAX_ADDRESS_ADDRS: usize = (u8::MAX as usize - ADDRESS_BASE_LEN) / 4;

/// Extension type, the high nibble of an extension's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtensionKind {
    /// Type 0: a single byte (no length byte) padding the header to a multiple
    /// of 4; skipped, never yielded by [`Extensions`].
    Pad,
    /// Type 1, 20 bytes: flags, `verno`, `ackno` and the sender's nonce.
    Control,
    /// Type 2, 36 bytes: a 256-bit service ID (the destination's, or the sender's).
    Service,
    /// Type 3, 12 + 4n bytes: other IPv4 locators of the sender, with `verno`/`ackno`.
    Address,
    /// Type 4, 4 + 4n bytes (1 <= n <= 20): the path service routers recorded.
    Source,
    /// A type this implementation does not know; skipped when its length is sane.
    Unknown(u8),
}

impl ExtensionKind {
    /// Decodes the type nibble (0..=15).
    pub fn from_nibble(nibble: u8) -> ExtensionKind {
        match nibble & 0x0f {
            0 => ExtensionKind::Pad,
            1 => ExtensionKind::Control,
            2 => ExtensionKind::Service,
            3 => ExtensionKind::Address,
            4 => ExtensionKind::Source,
            other => ExtensionKind::Unknown(other),
        }
    }

    /// The type nibble.
    pub fn nibble(self) -> u8 {
        match self {
            ExtensionKind::Pad => 0,
            ExtensionKind::Control => 1,
            ExtensionKind::Service => 2,
            ExtensionKind::Address => 3,
            ExtensionKind::Source => 4,
            ExtensionKind::Unknown(nibble) => nibble & 0x0f,
        }
    }

    /// Whether `len` is a valid total length for an extension of this type.
    fn allows_len(self, len: usize) -> bool {
        match self {
            ExtensionKind::Pad => len == 1,
            ExtensionKind::Control => len == CONTROL_LEN,
            ExtensionKind::Service => len == SERVICE_LEN,
            ExtensionKind::Address => {
                len >= ADDRESS_BASE_LEN && (len - ADDRESS_BASE_LEN).is_multiple_of(4)
            }
            ExtensionKind::Source => {
                let addrs = len.saturating_sub(SOURCE_BASE_LEN) / 4;
                len > SOURCE_BASE_LEN
                    && (len - SOURCE_BASE_LEN).is_multiple_of(4)
                    && addrs <= MAX_SOURCE_ADDRS
            }
            ExtensionKind::Unknown(_) => len >= 2,
        }
    }
}

/// One framed extension: its type, its offset in the SAL header, and all of
/// its bytes (generic header included). PAD bytes are never yielded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawExtension<'a> {
    /// The type nibble, decoded.
    pub kind: ExtensionKind,
    /// Where the extension starts, in bytes from the start of the SAL header
    /// (so at least 12).
    pub offset: usize,
    /// The whole extension, generic header included: exactly its length byte
    /// long, a length its type allows.
    pub bytes: &'a [u8],
}

/// Iterator over the extensions of a SAL header. Yields one `Err` for the
/// first framing error and then stops.
#[derive(Debug, Clone)]
pub struct Extensions<'a> {
    header: &'a [u8],
    offset: usize,
}

impl<'a> Extensions<'a> {
    /// Walks `header[start..]`; `header` is the whole SAL header (`shl * 4` bytes).
    pub(super) fn new(header: &'a [u8], start: usize) -> Extensions<'a> {
        Extensions {
            header,
            offset: start,
        }
    }

    fn fail(&mut self, error: Error) -> Option<Result<RawExtension<'a>>> {
        self.offset = self.header.len();
        Some(Err(error))
    }
}

impl<'a> Iterator for Extensions<'a> {
    type Item = Result<RawExtension<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        // PAD bytes are skipped here; the loop is bounded by the header length.
        while self.offset < self.header.len() {
            let offset = self.offset;
            let kind = ExtensionKind::from_nibble(self.header[offset] >> 4);
            if kind == ExtensionKind::Pad {
                self.offset += 1;
                continue;
            }
            let Some(&len) = self.header.get(offset + 1) else {
                return self.fail(Error::ExtensionMissingLength { offset });
            };
            if len < 2 {
                return self.fail(Error::ExtensionTooShort { offset, len });
            }
            let end = offset + usize::from(len);
            if end > self.header.len() {
                return self.fail(Error::ExtensionPastHeader { offset, len });
            }
            if !kind.allows_len(usize::from(len)) {
                return self.fail(Error::ExtensionBadLength { kind, len });
            }
            self.offset = end;
            return Some(Ok(RawExtension {
                kind,
                offset,
                bytes: &self.header[offset..end],
            }));
        }
        None
    }
}

/// Writes the 2-byte generic extension header.
fn emit_generic_header(buffer: &mut [u8], kind: ExtensionKind, len: usize) {
    buffer[0] = kind.nibble() << 4;
    // Callers only pass lengths that `allows_len` accepts, all below 256.
    buffer[1] = len as u8;
}

/// Checks a slice handed to a typed view: right kind and a length the kind allows.
fn check_extension(bytes: &[u8], kind: ExtensionKind) -> Result<()> {
    if bytes.len() < 2 {
        return Err(Error::ExtensionMissingLength { offset: 0 });
    }
    let len = bytes[1];
    if ExtensionKind::from_nibble(bytes[0] >> 4) != kind
        || usize::from(len) != bytes.len()
        || !kind.allows_len(bytes.len())
    {
        return Err(Error::ExtensionBadLength { kind, len });
    }
    Ok(())
}

/// Flags of a CONTROL extension.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ControlFlags(u8);

impl ControlFlags {
    /// No flag set (reserved bits clear).
    pub const NONE: ControlFlags = ControlFlags(0);
    /// Open a flow.
    pub const SYN: ControlFlags = ControlFlags(0x80);
    /// Re-synchronise: move a flow to a new locator.
    pub const RSYN: ControlFlags = ControlFlags(0x40);
    /// Acknowledges control message `ackno - 1`.
    pub const ACK: ControlFlags = ControlFlags(0x20);
    /// Negative acknowledgement.
    pub const NACK: ControlFlags = ControlFlags(0x10);
    /// Abort the flow.
    pub const RST: ControlFlags = ControlFlags(0x08);
    /// Close the flow at the SAL level.
    pub const FIN: ControlFlags = ControlFlags(0x04);

    /// The raw flags byte (reserved bits included, as received).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Wraps a raw flags byte, keeping reserved bits so re-emission is exact.
    pub const fn from_bits(bits: u8) -> ControlFlags {
        ControlFlags(bits)
    }

    /// Whether every flag in `other` is set.
    pub const fn contains(self, other: ControlFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for ControlFlags {
    type Output = ControlFlags;
    fn bitor(self, rhs: ControlFlags) -> ControlFlags {
        ControlFlags(self.0 | rhs.0)
    }
}

impl fmt::Debug for ControlFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(ControlFlags, &str); 6] = [
            (ControlFlags::SYN, "SYN"),
            (ControlFlags::RSYN, "RSYN"),
            (ControlFlags::ACK, "ACK"),
            (ControlFlags::NACK, "NACK"),
            (ControlFlags::RST, "RST"),
            (ControlFlags::FIN, "FIN"),
        ];
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                f.write_str(if first { "" } else { "|" })?;
                f.write_str(name)?;
                first = false;
            }
        }
        let reserved = self.0 & 0x03;
        if reserved != 0 {
            write!(f, "{}{reserved:#04x}", if first { "" } else { "|" })?;
        } else if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// Zero-copy view of a CONTROL extension (20 bytes):
/// type/len (2), flags (1), reserved (1), verno (4), ackno (4), nonce (8).
#[derive(Debug, Clone)]
pub struct ControlExt<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ControlExt<T> {
    /// Wraps exactly one CONTROL extension, checking its type and length.
    pub fn new_checked(buffer: T) -> Result<ControlExt<T>> {
        check_extension(buffer.as_ref(), ExtensionKind::Control)?;
        Ok(ControlExt { buffer })
    }

    /// The flags byte, reserved bits kept as received.
    pub fn flags(&self) -> ControlFlags {
        ControlFlags(self.buffer.as_ref()[2])
    }

    /// Number of this control message in the sender's sequence.
    pub fn verno(&self) -> u32 {
        read_u32(self.buffer.as_ref(), 4)
    }

    /// Next `verno` the sender expects from its peer.
    pub fn ackno(&self) -> u32 {
        read_u32(self.buffer.as_ref(), 8)
    }

    /// The sender's own nonce, announced in its SYN or SYN-ACK.
    pub fn nonce(&self) -> [u8; 8] {
        let mut nonce = [0; 8];
        nonce.copy_from_slice(&self.buffer.as_ref()[12..20]);
        nonce
    }
}

/// Parsed CONTROL extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControlRepr {
    /// SYN, RSYN, ACK, NACK, RST, FIN (any combination; reserved bits kept).
    pub flags: ControlFlags,
    /// Number of this control message in the sender's sequence; a
    /// retransmission reuses it.
    pub verno: u32,
    /// Next `verno` the sender expects from its peer (the peer's last plus one).
    pub ackno: u32,
    /// The sender's own 8 random bytes, announced in its SYN or SYN-ACK and
    /// repeated in each later control message; a mismatch gets it dropped.
    pub nonce: [u8; 8],
}

impl ControlRepr {
    /// Copies the fields out of a checked view; cannot fail.
    pub fn parse<T: AsRef<[u8]>>(ext: &ControlExt<T>) -> ControlRepr {
        ControlRepr {
            flags: ext.flags(),
            verno: ext.verno(),
            ackno: ext.ackno(),
            nonce: ext.nonce(),
        }
    }

    /// Writes the 20-byte extension at the start of `buffer`.
    pub fn emit(&self, buffer: &mut [u8]) -> Result<()> {
        ensure_room(buffer, CONTROL_LEN)?;
        let out = &mut buffer[..CONTROL_LEN];
        emit_generic_header(out, ExtensionKind::Control, CONTROL_LEN);
        out[2] = self.flags.0;
        out[3] = 0;
        out[4..8].copy_from_slice(&self.verno.to_be_bytes());
        out[8..12].copy_from_slice(&self.ackno.to_be_bytes());
        out[12..20].copy_from_slice(&self.nonce);
        Ok(())
    }
}

/// Zero-copy view of a SERVICE extension (36 bytes): type/len, reserved (2), ID (32).
#[derive(Debug, Clone)]
pub struct ServiceExt<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ServiceExt<T> {
    /// Wraps exactly one SERVICE extension, checking its type and length.
    pub fn new_checked(buffer: T) -> Result<ServiceExt<T>> {
        check_extension(buffer.as_ref(), ExtensionKind::Service)?;
        Ok(ServiceExt { buffer })
    }

    /// The 256-bit service ID (bytes 4..36), most significant byte first.
    pub fn service_id(&self) -> ServiceId {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&self.buffer.as_ref()[4..SERVICE_LEN]);
        ServiceId::from_bytes(bytes)
    }

    /// Writes a SERVICE extension for `id` at the start of `buffer`.
    pub fn emit(id: &ServiceId, buffer: &mut [u8]) -> Result<()> {
        ensure_room(buffer, SERVICE_LEN)?;
        let out = &mut buffer[..SERVICE_LEN];
        emit_generic_header(out, ExtensionKind::Service, SERVICE_LEN);
        out[2..4].fill(0);
        out[4..].copy_from_slice(id.as_bytes());
        Ok(())
    }
}

/// Iterates the IPv4 addresses packed in `bytes` (a multiple of 4 long).
fn addresses(bytes: &[u8]) -> impl Iterator<Item = Ipv4Addr> + '_ {
    bytes
        .chunks_exact(4)
        .map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3]))
}

/// Writes `addrs` back to back into `out` (sized by the caller).
fn emit_addresses(out: &mut [u8], addrs: &[Ipv4Addr]) {
    for (chunk, addr) in out.chunks_exact_mut(4).zip(addrs) {
        chunk.copy_from_slice(&addr.octets());
    }
}

/// Zero-copy view of an ADDRESS extension (12 + 4n bytes):
/// type/len, reserved (2), verno (4), ackno (4), n IPv4 addresses.
#[derive(Debug, Clone)]
pub struct AddressExt<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> AddressExt<T> {
    /// Wraps exactly one ADDRESS extension, checking its type and length.
    pub fn new_checked(buffer: T) -> Result<AddressExt<T>> {
        check_extension(buffer.as_ref(), ExtensionKind::Address)?;
        Ok(AddressExt { buffer })
    }

    /// The advertisement's sequence number, for reliable delivery (this stack
    /// copies the `verno` of the CONTROL it rides with).
    pub fn verno(&self) -> u32 {
        read_u32(self.buffer.as_ref(), 4)
    }

    /// Next `verno` the sender expects from its peer, as in CONTROL.
    pub fn ackno(&self) -> u32 {
        read_u32(self.buffer.as_ref(), 8)
    }

    /// The advertised locators.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        addresses(&self.buffer.as_ref()[ADDRESS_BASE_LEN..])
    }
}

/// Parsed ADDRESS extension: other locators of the sender, sent reliably.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddressRepr {
    /// The advertisement's sequence number; this stack sends the `verno` of the
    /// CONTROL it rides with.
    pub verno: u32,
    /// Next `verno` expected from the peer; this stack sends its CONTROL `ackno`.
    pub ackno: u32,
    /// The sender's other IPv4 locators (not the one the packet comes from).
    pub addrs: ArrayVec<Ipv4Addr, MAX_ADDRESS_ADDRS>,
}

impl AddressRepr {
    /// The view was length-checked, so the addresses always fit.
    pub fn parse<T: AsRef<[u8]>>(ext: &AddressExt<T>) -> AddressRepr {
        AddressRepr {
            verno: ext.verno(),
            ackno: ext.ackno(),
            addrs: ext.addresses().take(MAX_ADDRESS_ADDRS).collect(),
        }
    }

    /// Bytes [`AddressRepr::emit`] writes: 12 plus 4 per address.
    pub fn buffer_len(&self) -> usize {
        ADDRESS_BASE_LEN + 4 * self.addrs.len()
    }

    /// Writes the extension at the start of `buffer`.
    pub fn emit(&self, buffer: &mut [u8]) -> Result<()> {
        let len = self.buffer_len();
        ensure_room(buffer, len)?;
        let out = &mut buffer[..len];
        emit_generic_header(out, ExtensionKind::Address, len);
        out[2..4].fill(0);
        out[4..8].copy_from_slice(&self.verno.to_be_bytes());
        out[8..12].copy_from_slice(&self.ackno.to_be_bytes());
        emit_addresses(&mut out[ADDRESS_BASE_LEN..], &self.addrs);
        Ok(())
    }
}

/// Zero-copy view of a SOURCE extension (4 + 4n bytes, 1 <= n <= 20).
#[derive(Debug, Clone)]
pub struct SourceExt<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SourceExt<T> {
    /// Wraps exactly one SOURCE extension, checking its type and length.
    pub fn new_checked(buffer: T) -> Result<SourceExt<T>> {
        check_extension(buffer.as_ref(), ExtensionKind::Source)?;
        Ok(SourceExt { buffer })
    }

    /// The path the packet came through, the client's locator first.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        addresses(&self.buffer.as_ref()[SOURCE_BASE_LEN..])
    }

    /// The extension's reserved field, which this stack uses for the UDP
    /// port of the first address (see [`SourceRepr::client_port`]).
    pub fn client_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), 2)
    }
}

/// Parsed SOURCE extension: addresses a forwarded SYN or datagram came through.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceRepr {
    /// The client's IP address, then the address each service router was
    /// reached at, in hop order; 1 to 20 of them on the wire.
    pub addrs: ArrayVec<Ipv4Addr, MAX_SOURCE_ADDRS>,
    /// The UDP port the first address sent from, as the first router saw it
    /// (0: not recorded). WIRE.md's SOURCE has two reserved bytes before
    /// its addresses, which the reference stack neither reads nor sets; a
    /// router of this stack that receives a packet over UDP puts the
    /// sender's port there, so that a server can answer a client at the
    /// address and port it really used, even when several clients share an
    /// address (a NAT, or several hosts on one machine). Reference routers
    /// keep the field when they append an address, and reference servers
    /// ignore it.
    pub client_port: u16,
}

impl SourceRepr {
    /// The view was length-checked, so at most 20 addresses are present.
    pub fn parse<T: AsRef<[u8]>>(ext: &SourceExt<T>) -> SourceRepr {
        SourceRepr {
            addrs: ext.addresses().take(MAX_SOURCE_ADDRS).collect(),
            client_port: ext.client_port(),
        }
    }

    /// Bytes [`SourceRepr::emit`] writes: 4 plus 4 per address.
    pub fn buffer_len(&self) -> usize {
        SOURCE_BASE_LEN + 4 * self.addrs.len()
    }

    /// Writes the extension at the start of `buffer`. An empty list cannot be
    /// expressed on the wire (n >= 1) and is rejected.
    pub fn emit(&self, buffer: &mut [u8]) -> Result<()> {
        let len = self.buffer_len();
        if self.addrs.is_empty() {
            return Err(Error::ExtensionBadLength {
                kind: ExtensionKind::Source,
                len: len as u8,
            });
        }
        ensure_room(buffer, len)?;
        let out = &mut buffer[..len];
        emit_generic_header(out, ExtensionKind::Source, len);
        out[2..4].copy_from_slice(&self.client_port.to_be_bytes());
        emit_addresses(&mut out[SOURCE_BASE_LEN..], &self.addrs);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(region: &[u8]) -> Vec<Result<(ExtensionKind, usize, usize)>> {
        Extensions::new(region, 0)
            .map(|r| r.map(|e| (e.kind, e.offset, e.bytes.len())))
            .collect()
    }

    #[test]
    fn pads_are_skipped_and_unknown_types_framed() {
        // PAD, PAD, unknown type 9 of length 3, PAD
        let region = [0x00, 0x00, 0x90, 0x03, 0xaa, 0x00];
        assert_eq!(walk(&region), vec![Ok((ExtensionKind::Unknown(9), 2, 3))]);
    }

    #[test]
    fn framing_errors_stop_iteration() {
        assert_eq!(
            walk(&[0x10]),
            vec![Err(Error::ExtensionMissingLength { offset: 0 })]
        );
        assert_eq!(
            walk(&[0x90, 0x01, 0x00]),
            vec![Err(Error::ExtensionTooShort { offset: 0, len: 1 })]
        );
        assert_eq!(
            walk(&[0x90, 0x05, 0x00]),
            vec![Err(Error::ExtensionPastHeader { offset: 0, len: 5 })]
        );
        let mut control = [0u8; 24];
        control[0] = 0x10;
        control[1] = 24;
        assert_eq!(
            walk(&control),
            vec![Err(Error::ExtensionBadLength {
                kind: ExtensionKind::Control,
                len: 24
            })]
        );
    }

    #[test]
    fn source_length_limits() {
        assert!(!ExtensionKind::Source.allows_len(4));
        assert!(ExtensionKind::Source.allows_len(8));
        assert!(ExtensionKind::Source.allows_len(84));
        assert!(!ExtensionKind::Source.allows_len(88));
        assert!(!ExtensionKind::Source.allows_len(10));
        assert!(ExtensionKind::Address.allows_len(12));
        assert!(!ExtensionKind::Address.allows_len(14));
    }

    #[test]
    fn control_round_trip_and_flags_debug() {
        let repr = ControlRepr {
            flags: ControlFlags::SYN | ControlFlags::ACK,
            verno: 0x8b2e0b10,
            ackno: 7,
            nonce: *b"\xfe\xf7\x8a\x96\x9a\x72\x2d\xc0",
        };
        let mut buf = [0u8; CONTROL_LEN];
        repr.emit(&mut buf).unwrap();
        assert_eq!(&buf[..4], &[0x10, 0x14, 0xa0, 0x00]);
        let view = ControlExt::new_checked(&buf[..]).unwrap();
        assert_eq!(ControlRepr::parse(&view), repr);
        assert_eq!(format!("{:?}", repr.flags), "SYN|ACK");
        assert_eq!(format!("{:?}", ControlFlags::NONE), "-");
        assert!(ControlExt::new_checked(&buf[..19]).is_err());
    }

    #[test]
    fn empty_source_cannot_be_emitted() {
        let mut buf = [0u8; 8];
        assert!(SourceRepr::default().emit(&mut buf).is_err());
    }
}
