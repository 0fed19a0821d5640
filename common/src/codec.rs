//! The frame: a big-endian `u32` length followed by that many bytes of JSON.
//!
//! Framing is tokio-util's [`LengthDelimitedCodec`]; we only fix its
//! parameters in one place so that both peers and every test agree. A frame
//! longer than [`MAX_FRAME_LEN`] is a protocol error for that connection: the
//! codec refuses it before allocating its body.

use tokio_util::codec::LengthDelimitedCodec;

/// The largest frame either peer accepts or sends (1 MiB). Output lines are
/// cut well below this, so only a broken or hostile peer reaches it.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// The codec both peers use.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .max_frame_length(MAX_FRAME_LEN)
        .new_codec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use tokio_util::codec::Decoder;

    #[test]
    fn frame_over_the_cap_is_refused_before_its_body_arrives() {
        let mut buf = BytesMut::new();
        buf.put_u32((MAX_FRAME_LEN + 1) as u32);
        let err = codec().decode(&mut buf).unwrap_err();
        assert!(err.to_string().contains("frame size too big"), "{err}");
    }

    #[test]
    fn frame_at_the_cap_is_accepted() {
        let mut buf = BytesMut::new();
        buf.put_u32(MAX_FRAME_LEN as u32);
        buf.extend_from_slice(&vec![b' '; MAX_FRAME_LEN]);
        let frame = codec().decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.len(), MAX_FRAME_LEN);
    }
}
