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
    #[error("packet shorter than the 12-byte SAL base header")]
    Truncated,
    #[error("shl of {words} words ({bytes} bytes) is below the 12-byte base header")]
    HeaderTooShort { words: u8, bytes: usize },
    #[error("SAL header of {header} bytes runs past the {packet}-byte packet")]
    HeaderPastPacket { header: usize, packet: usize },
    #[error("extension at offset {offset} has no length byte before the header ends")]
    ExtensionMissingLength { offset: usize },
    #[error("extension at offset {offset} has invalid length {len}")]
    ExtensionTooShort { offset: usize, len: u8 },
    #[error("extension at offset {offset} of {len} bytes runs past the SAL header")]
    ExtensionPastHeader { offset: usize, len: u8 },
    #[error("{kind:?} extension has length {len}, which that type does not allow")]
    ExtensionBadLength { kind: ExtensionKind, len: u8 },
    #[error("{0:?} extension appears more than once")]
    DuplicateExtension(ExtensionKind),
    #[error("source flow ID is 0")]
    ZeroSourceFlow,
    #[error("SAL header checksum mismatch")]
    BadChecksum,
    #[error("buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall { needed: usize, available: usize },
    #[error("header would be {0} bytes, more than the 1020 that shl can express")]
    HeaderTooLong(usize),
    #[error("not an IPv4 packet carrying the SAL (protocol 144)")]
    NotSal,
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
