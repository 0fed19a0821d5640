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
    use bytes::{BufMut, Bytes, BytesMut};
    use proptest::prelude::*;
    use tokio_util::codec::{Decoder, Encoder};

    #[test]
    fn frame_over_the_cap_is_refused_before_its_body_arrives() {
        let mut buf = BytesMut::new();
        buf.put_u32((MAX_FRAME_LEN + 1) as u32);
        let err = codec().decode(&mut buf).unwrap_err();
        assert!(err.to_string().contains("frame size too big"), "{err}");
    }

    #[test]
    fn the_cap_is_one_mebibyte() {
        // Stated in bytes, not through the constant: the README promises 1 MiB.
        let mut buf = BytesMut::new();
        buf.put_u32(1_048_576);
        buf.extend_from_slice(&[b'x'; 1_048_576]);
        assert_eq!(codec().decode(&mut buf).unwrap().unwrap().len(), 1_048_576);
        let mut buf = BytesMut::new();
        buf.put_u32(1_048_577);
        assert!(codec().decode(&mut buf).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the payload, and however the bytes arrive, the peer
        /// decodes exactly the frame that was sent, and nothing more.
        #[test]
        fn any_frame_round_trips(
            payload in proptest::collection::vec(any::<u8>(), 0..4096),
            cut in any::<proptest::sample::Index>(),
        ) {
            let mut wire = BytesMut::new();
            codec().encode(Bytes::from(payload.clone()), &mut wire).unwrap();
            prop_assert_eq!(wire.len(), payload.len() + 4);
            prop_assert_eq!(&wire[..4], &(payload.len() as u32).to_be_bytes()[..]);
            let cut = cut.index(wire.len() + 1);
            let mut decoder = codec();
            let mut buf = BytesMut::from(&wire[..cut]);
            let early = decoder.decode(&mut buf).unwrap();
            if cut < wire.len() {
                prop_assert!(early.is_none(), "a partial frame is not a frame");
                buf.extend_from_slice(&wire[cut..]);
                let frame = decoder.decode(&mut buf).unwrap().expect("the whole frame arrived");
                prop_assert_eq!(&frame[..], &payload[..]);
            } else {
                prop_assert_eq!(&early.expect("the whole frame arrived")[..], &payload[..]);
            }
            prop_assert!(buf.is_empty());
        }

        /// A length over the cap is refused whatever follows it, and so is
        /// sending such a frame.
        #[test]
        fn any_frame_over_the_cap_is_refused(
            len in (MAX_FRAME_LEN as u32 + 1)..=u32::MAX,
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut buf = BytesMut::new();
            buf.put_u32(len);
            buf.extend_from_slice(&body);
            prop_assert!(codec().decode(&mut buf).is_err());
        }
    }

    #[test]
    fn sending_a_frame_over_the_cap_fails() {
        let mut wire = BytesMut::new();
        assert!(codec().encode(Bytes::from(vec![0; MAX_FRAME_LEN]), &mut wire).is_ok());
        let mut wire = BytesMut::new();
        assert!(codec()
            .encode(Bytes::from(vec![0; MAX_FRAME_LEN + 1]), &mut wire)
            .is_err());
        assert!(wire.is_empty());
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
