//! The IEEE 802.1Q VLAN tag, which smoltcp's Ethernet view does not know.
//!
//! On the wire the tag sits between the source MAC and the EtherType: a TPID of 0x8100 (which
//! takes the EtherType's place, so [`EthernetFrame::ethertype`](super::EthernetFrame) reads it),
//! then the 16-bit TCI, then the encapsulated EtherType. This view starts at the TCI, i.e. at
//! the Ethernet frame's payload, so the two views compose.

use super::EthernetProtocol;

/// The 802.1Q tag protocol identifier (customer VLAN).
pub const TPID_8021Q: u16 = 0x8100;
/// Bytes a tag adds to a frame.
pub const TAG_LEN: usize = 4;

/// A view of the 4 bytes after an 802.1Q TPID: TCI and inner EtherType.
#[derive(Debug, Clone, Copy)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    /// Wraps `buffer` without checking its length; accessors panic if it is under 4 bytes.
    pub const fn new_unchecked(buffer: T) -> Self {
        VlanTag { buffer }
    }

    /// Wraps `buffer` (the Ethernet payload) after checking that the tag fits.
    pub fn new_checked(buffer: T) -> Option<Self> {
        (buffer.as_ref().len() >= TAG_LEN).then_some(VlanTag { buffer })
    }

    fn word(&self, at: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    /// The tag control information: PCP (3 bits), DEI (1 bit), VLAN ID (12 bits).
    pub fn tci(&self) -> u16 {
        self.word(0)
    }

    /// The 12-bit VLAN identifier.
    pub fn vid(&self) -> u16 {
        self.tci() & 0x0fff
    }

    /// The EtherType of what the tag encapsulates.
    pub fn ethertype(&self) -> EthernetProtocol {
        EthernetProtocol::from(self.word(2))
    }

    /// The bytes after the tag.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[TAG_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // TCI: PCP 5, DEI 0, VID 100 (0xa064); then IPv4.
    static TAG: [u8; 6] = [0xa0, 0x64, 0x08, 0x00, 0xde, 0xad];

    #[test]
    fn reads_tag() {
        let t = VlanTag::new_checked(&TAG[..]).unwrap();
        assert_eq!(t.tci(), 0xa064);
        assert_eq!(t.vid(), 100);
        assert_eq!(t.ethertype(), EthernetProtocol::Ipv4);
        assert_eq!(t.payload(), &[0xde, 0xad]);
    }

    #[test]
    fn short_is_rejected() {
        assert!(VlanTag::new_checked(&TAG[..3]).is_none());
    }
}
