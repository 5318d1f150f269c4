//! The deadline exchange's wire: headers, fragments landing where they belong, and
//! datagrams without masks.

use super::*;

/// Writes header (with the packet mask) + payload into `out`.
fn encode(
    step: u64,
    direction: Direction,
    block: usize,
    mask: &[bool],
    payload: &[f32],
    out: &mut Vec<f32>,
) {
    encode_framed(step, direction, block, mask, true, payload, out);
}

mod header {
    use super::*;

    #[test]
    fn header_round_trip() {
        let mask: Vec<bool> = (0..40).map(|k| k % 3 == 0).collect();
        let mut out = Vec::new();
        encode(
            (1 << 33) + 5,
            Direction::Down,
            7,
            &mask,
            &[1.5, -2.0],
            &mut out,
        );
        let m = decode(&out).unwrap();
        assert_eq!(m.phase, phase((1 << 33) + 5, 1));
        assert_eq!(m.block, 7);
        assert_eq!(m.payload, &[1.5, -2.0]);
        assert_eq!(unpack_mask(m.mask_words, 40), mask);
        assert!(decode(&out[..3]).is_none());
    }
}

mod fragments {
    use super::*;

    /// One awaited message from rank 1, block 2: 10 elements in packets of 4 (3
    /// packets), the sender's mask `110`.
    fn message(offset_elems: &[(usize, std::ops::Range<usize>)]) -> (Vec<f32>, u64, Vec<bool>) {
        let expect = [(1usize, 2usize, 3usize)];
        let mut buf = vec![0f32; 10];
        let mut stash = Stash::new();
        let mut pb = PhaseBox::new(phase(4, 0), 4, &expect, vec![&mut buf[..]], &mut stash);
        let body: Vec<f32> = (1..=10).map(|x| x as f32).collect();
        let mask = [true, true, false];
        for (offset, range) in offset_elems {
            let mut out = Vec::new();
            encode(4, Direction::Up, 2, &mask, &body[range.clone()], &mut out);
            pb.deliver(1, 0, &out, *offset, false);
        }
        let invalid = pb.invalid;
        let arrived = pb.arrived();
        drop(stash);
        (buf, invalid, arrived[0].clone().unwrap_or_default())
    }

    #[test]
    fn fragments_land_where_they_belong() {
        let (buf, invalid, arrived) = message(&[(4, 4..8), (0, 0..4)]);
        assert_eq!(invalid, 0);
        assert_eq!(&buf[..8], &[1., 2., 3., 4., 5., 6., 7., 8.]);
        assert_eq!(arrived, vec![true, true, false]);
        // The last packet is short; a duplicate is harmless.
        let (buf, invalid, arrived) = message(&[(8, 8..10), (8, 8..10)]);
        assert_eq!((invalid, &buf[8..]), (0, &[9.0f32, 10.0][..]));
        // Sent (arrived) but not in the sender's mask: not used.
        assert_eq!(arrived, Vec::<bool>::new());
    }

    #[test]
    fn bad_fragments_never_touch_the_buffer() {
        for bad in [
            (12, 0..4),             // past the end
            (8, 0..4),              // overruns the block
            (2, 0..4),              // not on a packet boundary
            (0, 0..3),              // a partial packet
            (0, 0..0),              // empty
            (usize::MAX - 1, 0..4), // offset overflow
        ] {
            let (buf, invalid, arrived) = message(std::slice::from_ref(&bad));
            assert_eq!(invalid, 1, "{bad:?}");
            assert!(buf.iter().all(|&x| x == 0.0), "{bad:?}");
            assert!(arrived.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn foreign_block_sender_or_mask_is_invalid() {
        let expect = [(1usize, 2usize, 3usize)];
        let mut buf = [0f32; 10];
        let mut stash = Stash::new();
        let mut pb = PhaseBox::new(phase(4, 0), 4, &expect, vec![&mut buf[..]], &mut stash);
        let mut out = Vec::new();
        encode(4, Direction::Up, 3, &[true; 3], &[1.0; 4], &mut out);
        pb.deliver(1, 0, &out, 0, false); // block 3 is not awaited
        encode(4, Direction::Up, 2, &[true; 3], &[1.0; 4], &mut out);
        pb.deliver(0, 0, &out, 0, false); // rank 0 is not the sender
        encode(4, Direction::Up, 2, &[true; 40], &[1.0; 4], &mut out);
        pb.deliver(1, 0, &out, 0, false); // mask of the wrong size
        encode(
            4,
            Direction::Up,
            2,
            &[true, true, true],
            &[1.0; 4],
            &mut out,
        );
        pb.deliver(1, 0, &out, 0, false); // valid
        encode(
            4,
            Direction::Up,
            2,
            &[true, false, true],
            &[2.0; 4],
            &mut out,
        );
        pb.deliver(1, 0, &out, 4, false); // contradicts the first mask
        pb.deliver(1, 0, &out[..2], 0, false); // truncated header
        encode(3, Direction::Up, 2, &[true; 3], &[1.0; 4], &mut out);
        pb.deliver(1, 0, &out, 4, false); // an earlier step: late
        assert_eq!((pb.invalid, pb.late), (5, 1));
        drop(pb);
        assert_eq!(&buf[..], &[1., 1., 1., 1., 0., 0., 0., 0., 0., 0.]);
    }
}

mod datagrams {
    use super::*;

    /// A datagram transport's header has no mask, only the count of packets sent: the
    /// message is complete once that many distinct packets arrived.
    #[test]
    fn maskless_fragments_complete_by_count() {
        let expect = [(1usize, 0usize, 3usize)];
        let mut buf = vec![0f32; 10];
        let mut stash = Stash::new();
        let mut pb = PhaseBox::new(phase(2, 1), 4, &expect, vec![&mut buf[..]], &mut stash);
        let mask = [true, false, true];
        let mut out = Vec::new();
        encode_framed(2, Direction::Down, 0, &mask, false, &[1.0; 4], &mut out);
        pb.deliver(1, 0, &out, 0, false);
        assert!(!pb.complete());
        pb.deliver(1, 0, &out, 0, false); // duplicate
        assert!(!pb.complete());
        encode_framed(2, Direction::Down, 0, &mask, false, &[3.0; 2], &mut out);
        pb.deliver(1, 0, &out, 8, false);
        assert!(pb.complete());
        // A fragment claiming another count contradicts the header.
        encode_framed(
            2,
            Direction::Down,
            0,
            &[true; 3],
            false,
            &[2.0; 4],
            &mut out,
        );
        pb.deliver(1, 0, &out, 4, false);
        assert_eq!(pb.invalid, 1);
        assert_eq!(pb.arrived(), vec![Some(vec![true, false, true])]);
        assert_eq!(buf, [1., 1., 1., 1., 0., 0., 0., 0., 3., 3.]);
    }

    /// Datagrams of one message arrive in order: once the last packet is in, a message
    /// all of whose packets were sent is settled at once, not after the idle time. One
    /// whose sender dropped packets in software cannot be settled that way (its header
    /// counts what was sent, not which), nor can one whose transport may reorder.
    #[test]
    fn an_ordered_message_settles_when_its_last_packet_arrives() {
        let expect = [(1usize, 0usize, 3usize)];
        let settles = |ordered: bool, mask: &[bool]| {
            let mut buf = [0f32; 10];
            let mut stash = Stash::new();
            let mut pb = PhaseBox::new(phase(2, 1), 4, &expect, vec![&mut buf[..]], &mut stash);
            pb.ordered = ordered;
            let mut out = Vec::new();
            // Packet 0, then packet 2 (the last): packet 1 was lost or never sent.
            encode_framed(2, Direction::Down, 0, mask, false, &[1.0; 4], &mut out);
            pb.deliver(1, 0, &out, 0, false);
            assert!(!pb.complete());
            encode_framed(2, Direction::Down, 0, mask, false, &[3.0; 2], &mut out);
            pb.deliver(1, 0, &out, 8, false);
            pb.complete()
        };
        assert!(settles(true, &[true; 3]));
        assert!(!settles(false, &[true; 3]));
        // Two of three sent and both here: complete by count anyway.
        assert!(settles(false, &[true, false, true]));
    }
}
