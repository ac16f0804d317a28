//! Generic UDP Encapsulation (draft-ietf-intarea-gue-09 §3.1), variant 0, which smoltcp lacks.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Ver|C|  Hlen   |  Proto/ctype  |             Flags             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//! dsrgate emits the 4-byte base header with no optional fields: version 0, C = 0 (data),
//! Hlen = 0, Proto = the inner IP protocol (4 for IPv4, 41 for IPv6), Flags = 0. This is the
//! form Linux's `fou ... gue` receive path accepts.

/// Length of the base header (no optional fields).
pub const HEADER_LEN: usize = 4;

/// A view of a GUE header at the start of a UDP payload.
#[derive(Debug, Clone, Copy)]
pub struct GueHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> GueHeader<T> {
    /// Wraps `buffer` after checking that the base header and its optional fields fit.
    pub fn new_checked(buffer: T) -> Option<Self> {
        let h = GueHeader { buffer };
        let b = h.buffer.as_ref();
        (b.len() >= HEADER_LEN && b.len() >= h.header_len()).then_some(h)
    }

    /// The version field (0 for the header format above).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 6
    }

    /// True for a control message, false for data.
    pub fn control(&self) -> bool {
        self.buffer.as_ref()[0] & 0x20 != 0
    }

    /// Length of the header including optional fields, in bytes.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + usize::from(self.buffer.as_ref()[0] & 0x1f) * 4
    }

    /// For a data message, the IP protocol number of the payload.
    pub fn proto(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    /// The flags field.
    pub fn flags(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }

    /// The encapsulated packet.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> GueHeader<T> {
    /// Writes a base data header (version 0, no optional fields, no flags) carrying `proto`.
    /// Returns `None` if the buffer is shorter than [`HEADER_LEN`].
    pub fn emit_data(mut buffer: T, proto: u8) -> Option<Self> {
        let b = buffer.as_mut().get_mut(..HEADER_LEN)?;
        b.copy_from_slice(&[0, proto, 0, 0]);
        Some(GueHeader { buffer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_then_read() {
        let mut b = [0xffu8; 6];
        GueHeader::emit_data(&mut b[..], 4).unwrap();
        assert_eq!(&b[..4], &[0, 4, 0, 0]);
        let h = GueHeader::new_checked(&b[..]).unwrap();
        assert_eq!((h.version(), h.control(), h.header_len()), (0, false, 4));
        assert_eq!((h.proto(), h.flags()), (4, 0));
        assert_eq!(h.payload(), &[0xff, 0xff]);
    }

    #[test]
    fn optional_fields_must_fit() {
        // Hlen = 2 words: the header claims 12 bytes but only 8 are present.
        let b = [0x02, 41, 0, 0, 1, 2, 3, 4];
        assert!(GueHeader::new_checked(&b[..]).is_none());
        assert!(GueHeader::new_checked(&b[..3]).is_none());
        assert!(GueHeader::emit_data(&mut [0u8; 3][..], 4).is_none());
    }
}
