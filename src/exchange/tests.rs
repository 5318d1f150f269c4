//! The exchange against exact averaging, under drops, packets, traces and deadlines.

use super::average::Target;
use super::*;
use crate::comm::local::LocalTransport;
use crate::drop::Bernoulli;
use std::sync::Arc;

const D: usize = 23;

/// Runs `steps` exchanges on a local network; rank r starts with params r·(1..D).
/// Returns each rank's final params and summed counts.
fn run(
    size: usize,
    mode: Mode,
    drop: Arc<dyn DropModel>,
    steps: u64,
) -> Vec<(Vec<f32>, StepCounters)> {
    run_packets(size, mode, drop, steps, None)
}

fn run_packets(
    size: usize,
    mode: Mode,
    drop: Arc<dyn DropModel>,
    steps: u64,
    packet: Option<usize>,
) -> Vec<(Vec<f32>, StepCounters)> {
    run_chunked(size, mode, drop, steps, packet, usize::MAX)
}

/// [`run_packets`] with messages cut into chunks of `chunk` elements.
fn run_chunked(
    size: usize,
    mode: Mode,
    drop: Arc<dyn DropModel>,
    steps: u64,
    packet: Option<usize>,
    chunk: usize,
) -> Vec<(Vec<f32>, StepCounters)> {
    let handles: Vec<_> = LocalTransport::network(size)
        .into_iter()
        .map(|t| {
            let drop = Arc::clone(&drop);
            std::thread::spawn(move || {
                let layout = Layout::new(size, mode, D, 5).unwrap();
                let mut ex =
                    Exchange::new(layout, Box::new(Shared(drop)), packet).with_chunk_elems(chunk);
                let r = t.rank();
                let mut params: Vec<f32> = (0..D).map(|i| (r * 100 + i) as f32).collect();
                let mut total = StepCounters::default();
                for s in 0..steps {
                    total.add(&ex.step(&t, s, &mut params).unwrap());
                }
                (params, total)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

struct Shared(Arc<dyn DropModel>);
impl DropModel for Shared {
    fn drops(&self, m: &MessageId) -> bool {
        self.0.drops(m)
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}

fn initial(r: usize) -> Vec<f32> {
    (0..D).map(|i| (r * 100 + i) as f32).collect()
}

fn mean_of(ranks: std::ops::Range<usize>) -> Vec<f32> {
    let n = ranks.len() as f32;
    (0..D)
        .map(|i| ranks.clone().map(|r| initial(r)[i]).sum::<f32>() / n)
        .collect()
}

/// A rank keeps counters for its own links only: O(ranks), not O(ranks²) (a
/// thousand in-process ranks held 48 MB of counters each).
#[test]
fn link_counters_grow_with_the_ranks_not_their_square() {
    let n = 1000;
    let layout = Layout::new(n, Mode::Colocated, 4 * n, 5).unwrap();
    let ex = Exchange::new(layout, Box::new(Bernoulli::new(1, 0.1)), None);
    assert_eq!(ex.link_state().len(), 6 * n);
}

#[test]
fn dedicated_without_drops_is_exact_averaging() {
    let out = run(
        5,
        Mode::Dedicated { servers: 2 },
        Arc::new(Bernoulli::new(1, 0.0)),
        1,
    );
    let mean = mean_of(2..5);
    for (params, c) in &out[2..] {
        assert_eq!(params, &mean);
        assert_eq!((c.sent_up, c.dropped_up), (2, 0));
    }
    // Each server sends its block to all three workers.
    assert_eq!(out[0].1.sent_down + out[1].1.sent_down, 6);
}

#[test]
fn colocated_without_drops_is_exact_averaging() {
    let out = run(4, Mode::Colocated, Arc::new(Bernoulli::new(1, 0.0)), 1);
    let mean = mean_of(0..4);
    for (params, c) in &out {
        for (a, b) in params.iter().zip(&mean) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        // Three of four blocks leave each rank; its own never crosses the network.
        assert_eq!(c.sent_up, 3);
        assert_eq!(c.sent_down, 3);
    }
    // Every block goes up from three ranks and comes back down to three.
    let bytes: u64 = out.iter().map(|(_, c)| c.bytes_sent).sum();
    assert_eq!(bytes, 2 * 3 * 4 * D as u64);
}

#[test]
fn everything_dropped_keeps_every_replica() {
    for mode in [Mode::Dedicated { servers: 2 }, Mode::Colocated] {
        let out = run(5, mode, Arc::new(Bernoulli::new(1, 1.0)), 3);
        for (r, (params, c)) in out.iter().enumerate() {
            assert_eq!(params, &initial(r), "{mode:?} rank {r}");
            assert_eq!(c.sent_up + c.sent_down + c.bytes_sent, 0);
        }
        let dropped_up: u64 = out.iter().map(|(_, c)| c.dropped_up).sum();
        let expected = match mode {
            Mode::Dedicated { .. } => 3 * 2 * 3, // workers × blocks × steps
            Mode::Colocated => 5 * 4 * 3,        // ranks × foreign blocks × steps
        };
        assert_eq!(dropped_up, expected, "{mode:?}");
    }
}

/// Drops exactly the downlink of block 0 to rank 3.
struct DropOneReply;
impl DropModel for DropOneReply {
    fn drops(&self, m: &MessageId) -> bool {
        m.direction == Direction::Down && m.dst == 3 && m.block == 0
    }
    fn describe(&self) -> String {
        "test".into()
    }
}

#[test]
fn lost_reply_keeps_own_block_and_lost_upload_is_left_out() {
    let out = run(5, Mode::Dedicated { servers: 2 }, Arc::new(DropOneReply), 1);
    let mean = mean_of(2..5);
    let block0 = 0..12; // 23 params over two blocks: 12 + 11
    assert_eq!(&out[3].0[block0.clone()], &initial(3)[block0.clone()]);
    assert_eq!(&out[3].0[12..], &mean[12..]);
    assert_eq!(out[2].0, mean);
    assert_eq!(out[0].1.dropped_down, 1);

    struct DropOneUpload;
    impl DropModel for DropOneUpload {
        fn drops(&self, m: &MessageId) -> bool {
            m.direction == Direction::Up && m.src == 4 && m.block == 1
        }
        fn describe(&self) -> String {
            "test".into()
        }
    }
    let out = run(
        5,
        Mode::Dedicated { servers: 2 },
        Arc::new(DropOneUpload),
        1,
    );
    let mean23 = mean_of(2..4);
    for (params, _) in &out[2..] {
        assert_eq!(&params[..12], &mean[..12]);
        assert_eq!(&params[12..], &mean23[12..]);
    }
}

#[test]
fn random_drops_never_hang_and_counts_add_up() {
    for mode in [Mode::Dedicated { servers: 3 }, Mode::Colocated] {
        let steps = 40;
        let out = run(6, mode, Arc::new(Bernoulli::new(11, 0.3)), steps);
        let up: u64 = out.iter().map(|(_, c)| c.sent_up + c.dropped_up).sum();
        let expected = match mode {
            Mode::Dedicated { servers } => (6 - servers as u64) * servers as u64 * steps,
            Mode::Colocated => 6 * 5 * steps,
        };
        assert_eq!(up, expected, "{mode:?}");
        let dropped: u64 = out.iter().map(|(_, c)| c.dropped_up).sum();
        let rate = dropped as f64 / up as f64;
        assert!(
            (0.2..0.4).contains(&rate),
            "{mode:?}: uplink drop rate {rate}"
        );
    }
}

/// Drops packet 1 (elements 4..8 of block 0) of worker 4's upload, and packet 2 of
/// the reply to worker 3.
struct DropPackets;
impl DropModel for DropPackets {
    fn drops(&self, m: &MessageId) -> bool {
        m.block == 0
            && ((m.direction == Direction::Up && m.src == 4 && m.packet == 1)
                || (m.direction == Direction::Down && m.dst == 3 && m.packet == 2))
    }
    fn describe(&self) -> String {
        "test".into()
    }
}

#[test]
fn packets_are_merged_element_wise() {
    let out = run_packets(
        5,
        Mode::Dedicated { servers: 2 },
        Arc::new(DropPackets),
        1,
        Some(4),
    );
    let mean = mean_of(2..5);
    let mean23 = mean_of(2..4);
    // Worker 2 got every packet: block 0 averaged over all three copies, except
    // elements 4..8, averaged over the two copies that carried them.
    let w2 = &out[2].0;
    assert_eq!(&w2[..4], &mean[..4]);
    assert_eq!(&w2[4..8], &mean23[4..8]);
    assert_eq!(&w2[8..], &mean[8..]);
    // Worker 3 lost packet 2 (elements 8..12) of the reply: keeps its own values there.
    let w3 = &out[3].0;
    assert_eq!(&w3[..8], &w2[..8]);
    assert_eq!(&w3[8..12], &initial(3)[8..12]);
    assert_eq!(&w3[12..], &w2[12..]);
    // Block 0 has 12 elements = 3 packets; block 1 has 11 = 3 packets.
    assert_eq!(out[4].1.packets_up, 6);
    assert_eq!(out[4].1.packets_dropped_up, 1);
    assert_eq!(out[4].1.sent_up, 2);
    assert_eq!(out[4].1.bytes_sent, 4 * (23 - 4));
    assert_eq!(out[0].1.packets_dropped_down, 1);
    assert_eq!(out[0].1.dropped_down, 0);
}

#[test]
fn packets_without_drops_equal_whole_blocks() {
    for mode in [Mode::Dedicated { servers: 2 }, Mode::Colocated] {
        let whole = run(5, mode, Arc::new(Bernoulli::new(1, 0.0)), 2);
        let packets = run_packets(5, mode, Arc::new(Bernoulli::new(1, 0.0)), 2, Some(3));
        for (a, b) in whole.iter().zip(&packets) {
            assert_eq!(a.0, b.0, "{mode:?}");
        }
    }
}

#[test]
fn recorded_trace_replays_exactly() {
    for (mode, packet) in [
        (Mode::Dedicated { servers: 2 }, Some(5)),
        (Mode::Colocated, None),
    ] {
        let model: Arc<dyn DropModel> = Arc::new(Bernoulli::new(21, 0.3));
        let original = run_packets(5, mode, Arc::clone(&model), 8, packet);
        let layout = Layout::new(5, mode, D, 5).unwrap();
        let mut recorder = Exchange::new(layout, Box::new(Shared(model)), packet);
        let mut rows = Vec::new();
        for s in 0..8 {
            recorder.trace_step(s, &mut rows);
        }
        assert!(!rows.is_empty());
        let replay: Arc<dyn DropModel> =
            Arc::new(crate::drop::Replay::from_records("t".into(), rows));
        let replayed = run_packets(5, mode, replay, 8, packet);
        for (a, b) in original.iter().zip(&replayed) {
            assert_eq!(a, b, "{mode:?}");
        }
    }
}

/// Deadline detection over `transport` ("local" or "udp" on loopback): with a
/// generous deadline it must reproduce the oracle exchange exactly.
fn run_deadline(
    size: usize,
    mode: Mode,
    drop: Arc<dyn DropModel>,
    steps: u64,
    packet: Option<usize>,
    udp: bool,
) -> Vec<(Vec<f32>, StepCounters)> {
    let handles: Vec<_> = LocalTransport::network(size)
        .into_iter()
        .map(|local| {
            let drop = Arc::clone(&drop);
            std::thread::spawn(move || {
                let layout = Layout::new(size, mode, D, 5).unwrap();
                let mut ex = Exchange::new(layout, Box::new(Shared(drop)), packet)
                    .with_deadline(std::time::Duration::from_secs(2));
                let opts = crate::comm::udp::UdpOptions {
                    subnet: Some("127.0.0.0/8".parse().unwrap()),
                    port_base: None,
                    ..Default::default()
                };
                let udp =
                    udp.then(|| crate::comm::udp::UdpTransport::connect(&local, &opts).unwrap());
                let t: &dyn Transport = match &udp {
                    Some(u) => u,
                    None => &local,
                };
                let r = t.rank();
                let mut params: Vec<f32> = (0..D).map(|i| (r * 100 + i) as f32).collect();
                let mut total = StepCounters::default();
                for s in 0..steps {
                    total.add(&ex.step(t, s, &mut params).unwrap());
                }
                total.late += ex.quiesce(t);
                (params, total)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Drops packets at random but never the first of a message, so no message is lost
/// whole and no deadline ever passes.
struct KeepFirst(Bernoulli);
impl DropModel for KeepFirst {
    fn drops(&self, m: &MessageId) -> bool {
        m.packet > 0 && self.0.drops(m)
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}

#[test]
fn deadline_detection_reproduces_the_oracle_locally_and_over_udp() {
    for mode in [Mode::Dedicated { servers: 2 }, Mode::Colocated] {
        let drop: Arc<dyn DropModel> = Arc::new(KeepFirst(Bernoulli::new(9, 0.3)));
        let oracle = run_packets(4, mode, Arc::clone(&drop), 4, Some(2));
        for udp in [false, true] {
            let out = run_deadline(4, mode, Arc::clone(&drop), 4, Some(2), udp);
            for (r, ((p, c), (q, d))) in out.iter().zip(&oracle).enumerate() {
                assert_eq!(p, q, "{mode:?} udp={udp} rank {r}");
                assert_eq!(
                    c.packets_received_up, d.packets_received_up,
                    "{mode:?} udp={udp} rank {r}: {c:?} vs {d:?}"
                );
                assert_eq!(c.packets_received_down, d.packets_received_down);
                assert_eq!((c.late, c.rejected), (0, 0), "{mode:?} udp={udp}");
            }
            let sent: u64 = out
                .iter()
                .map(|(_, c)| c.packets_up - c.packets_dropped_up)
                .sum();
            let received: u64 = out.iter().map(|(_, c)| c.packets_received_up).sum();
            assert_eq!(sent, received, "{mode:?} udp={udp}");
        }
    }
}

#[test]
fn random_packet_drops_never_hang() {
    for mode in [Mode::Dedicated { servers: 3 }, Mode::Colocated] {
        let out = run_packets(6, mode, Arc::new(Bernoulli::new(5, 0.5)), 30, Some(2));
        let packets: u64 = out.iter().map(|(_, c)| c.packets_up).sum();
        let dropped: u64 = out.iter().map(|(_, c)| c.packets_dropped_up).sum();
        let rate = dropped as f64 / packets as f64;
        assert!((0.4..0.6).contains(&rate), "{mode:?}: {rate}");
    }
}

#[test]
fn pipelined_chunks_give_the_same_bits_and_counts() {
    for mode in [Mode::Dedicated { servers: 2 }, Mode::Colocated] {
        for packet in [None, Some(3)] {
            for p in [0.0, 0.4] {
                let drop: Arc<dyn DropModel> = Arc::new(Bernoulli::new(7, p));
                let whole = run_chunked(5, mode, Arc::clone(&drop), 6, packet, usize::MAX);
                for chunk in [1, 2, 5] {
                    let piped = run_chunked(5, mode, Arc::clone(&drop), 6, packet, chunk);
                    assert_eq!(
                        whole, piped,
                        "{mode:?} packet {packet:?} p {p} chunk {chunk}"
                    );
                }
            }
        }
    }
    // The stage count: the longest block over the chunk size, at least 1, at most the cap.
    let layout = Layout::new(3, Mode::Dedicated { servers: 1 }, 100, 5).unwrap();
    let ex = |chunk| {
        Exchange::new(layout.clone(), Box::new(Bernoulli::new(1, 0.0)), None)
            .with_chunk_elems(chunk)
    };
    assert_eq!(ex(1000).chunks(), 1);
    assert_eq!(ex(30).chunks(), 4);
    assert_eq!(ex(1).chunks(), MAX_CHUNKS);
}

/// Copies with −0, NaN, subnormals and rounding in every packet, each packet in both,
/// one or none of them: the
/// average in place (in the replica or the first copy), whole or in parts, has the
/// bits of the average into the buffer.
#[test]
fn every_average_target_gives_the_same_bits() {
    let values = |seed: u32, n: usize| -> Vec<f32> {
        (0..n as u32)
            .map(|i| match (i + seed) % 6 {
                0 => -0.0,
                1 => f32::from_bits(1 + i), // subnormal
                2 => 0.1 * (i + seed) as f32,
                3 => -1e30 / (1 + i) as f32,
                4 => f32::NAN,
                _ => 1.0 / 3.0 + i as f32,
            })
            .collect()
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    // Both layouts give block 0 all D elements: one dedicated server over D, or three
    // co-located ranks over 3 D.
    for (mode, n, target) in [
        (Mode::Dedicated { servers: 1 }, D, Target::Inbox),
        (Mode::Colocated, 3 * D, Target::Replica),
    ] {
        let layout = Layout::new(3, mode, n, 5).unwrap();
        let mut ex = Exchange::new(layout, Box::new(Bernoulli::new(1, 0.0)), Some(6));
        let range = ex.layout.block(0);
        let len = range.len();
        // Packets of 6 elements (every kind of value in each of them): the first copy
        // only, neither, both, the second only.
        assert_eq!((len, ex.packets(len)), (D, 4), "{mode:?}");
        let masks = vec![
            vec![true, false, true, false],
            vec![false, false, true, true],
        ];
        let inbox: Vec<f32> = [values(1, len), values(4, len)].concat();
        let own = values(2, n);
        let colocated = target == Target::Replica;
        let mut params = if colocated { own.clone() } else { Vec::new() };
        ex.inbox.clone_from(&inbox);
        ex.inbox_masks.clone_from(&masks);
        ex.average_served(0, &mut params, 2);
        let expected = bits(&ex.average);
        for cut in [0, 1, 5, len] {
            let mut params = if colocated { own.clone() } else { Vec::new() };
            ex.inbox.clone_from(&inbox);
            ex.average_part(0, &mut params, 2, target, 0..cut);
            ex.average_part(0, &mut params, 2, target, cut..len);
            let got = if colocated {
                &params[range.clone()]
            } else {
                &ex.inbox[..len]
            };
            assert_eq!(bits(got), expected, "{mode:?}, cut at {cut}");
        }
    }
}
