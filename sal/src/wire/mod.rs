//! The SAL wire format (WIRE.md): zero-copy packet views and plain `Repr` structs.
//!
//! The layout follows smoltcp's `wire` module: a `Packet<T: AsRef<[u8]>>` view
//! whose `new_checked` validates every length before any accessor can index,
//! and a `Repr` that `parse`s from a checked view and `emit`s into a buffer.
//! Every malformed input yields an [`Error`] value; nothing here panics,
//! allocates, or loops more than once over the input.

mod carriage;
mod ext;
mod header;

pub use carriage::{
    address_words, adjust_checksum, fill_transport_checksum, ipv4_payload,
    readdress_transport_checksum, verify_transport_checksum, Ipv4Carriage, TransportProtocol,
    IPV4_HEADER_LEN, SAL_IP_PROTOCOL, UDP_CLIENT_PORT, UDP_SERVER_PORT,
};
pub use ext::{
    AddressExt, AddressRepr, ControlExt, ControlFlags, ControlRepr, ExtensionKind, Extensions,
    RawExtension, ServiceExt, SourceExt, SourceRepr, ADDRESS_BASE_LEN, CONTROL_LEN,
    MAX_ADDRESS_ADDRS, MAX_SOURCE_ADDRS, SERVICE_LEN, SOURCE_BASE_LEN,
};
pub use header::{SalPacket, SalRepr, BASE_HEADER_LEN, MAX_HEADER_LEN};

/// Why bytes were rejected as a SAL packet. Receivers count these and drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Fewer than 12 bytes: no room for the base header.
    #[error("packet shorter than the 12-byte SAL base header")]
    Truncated,
    /// `shl * 4` is below the 12-byte base header.
    #[error("shl of {words} words ({bytes} bytes) is below the 12-byte base header")]
    HeaderTooShort {
        /// The `shl` field as received, in 32-bit words.
        words: u8,
        /// The header length that claims, `shl * 4` bytes.
        bytes: usize,
    },
    /// `shl * 4` is longer than the whole packet.
    #[error("SAL header of {header} bytes runs past the {packet}-byte packet")]
    HeaderPastPacket {
        /// The header length claimed (`shl * 4`), in bytes.
        header: usize,
        /// The packet's length in bytes.
        packet: usize,
    },
    /// A non-PAD extension starts on the header's last byte, so its length byte
    /// is missing (also: a slice under 2 bytes given to a typed view).
    #[error("extension at offset {offset} has no length byte before the header ends")]
    ExtensionMissingLength {
        /// Where the extension starts, in bytes from the start of the SAL header
        /// (0 from a typed view).
        offset: usize,
    },
    /// A non-PAD extension's length byte is 0 or 1.
    #[error("extension at offset {offset} has invalid length {len}")]
    ExtensionTooShort {
        /// Where the extension starts, in bytes from the start of the SAL header.
        offset: usize,
        /// Its length byte as received.
        len: u8,
    },
    /// An extension's length runs past `shl * 4`.
    #[error("extension at offset {offset} of {len} bytes runs past the SAL header")]
    ExtensionPastHeader {
        /// Where the extension starts, in bytes from the start of the SAL header.
        offset: usize,
        /// Its length byte as received.
        len: u8,
    },
    /// An extension's length is not one its type allows (CONTROL not 20 bytes,
    /// SOURCE without addresses or with over 20, ...), or a typed view got
    /// another type.
    #[error("{kind:?} extension has length {len}, which that type does not allow")]
    ExtensionBadLength {
        /// The extension's type (for a typed view, the type it expected).
        kind: ExtensionKind,
        /// Its length byte (for an emit, the length it would have had).
        len: u8,
    },
    /// CONTROL, ADDRESS or SOURCE appears twice, or SERVICE a third time.
    #[error("{0:?} extension appears more than once")]
    DuplicateExtension(ExtensionKind),
    /// A repr to emit has a sender's service but no destination service: the
    /// first SERVICE extension is always read as the destination, so it
    /// would come back as one.
    #[error("a source service needs a destination service before it")]
    SourceServiceAlone,
    /// `src_flowid` is 0 on a packet that is not a reset (only a RST may carry 0).
    #[error("source flow ID is 0")]
    ZeroSourceFlow,
    /// The SAL header's `check` field does not verify.
    #[error("SAL header checksum mismatch")]
    BadChecksum,
    /// An emit's output buffer is too short; also a transport segment too short
    /// (or too long) to checksum.
    #[error("buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall {
        /// Bytes the operation needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// A header to emit would exceed 1020 bytes (`shl` is one byte of words);
    /// also an IPv4 packet over 65535 bytes. Carries the length in bytes.
    #[error("header would be {0} bytes, more than the 1020 that shl can express")]
    HeaderTooLong(usize),
    /// A well-formed IPv4 packet whose protocol is not 144.
    #[error("not an IPv4 packet carrying the SAL (protocol 144)")]
    NotSal,
    /// Not a usable IPv4 packet: truncated, not version 4, bad header checksum,
    /// or a fragment.
    #[error("malformed IPv4 header")]
    BadIpv4,
}

/// Result alias for this module.
pub type Result<T> = core::result::Result<T, Error>;

/// Reads a big-endian u16 at `at`; callers have checked the length.
fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// Reads a big-endian u32 at `at`; callers have checked the length.
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Checks that `buffer` can hold `needed` bytes.
fn ensure_room(buffer: &[u8], needed: usize) -> Result<()> {
    if buffer.len() < needed {
        return Err(Error::BufferTooSmall {
            needed,
            available: buffer.len(),
        });
    }
    Ok(())
}
