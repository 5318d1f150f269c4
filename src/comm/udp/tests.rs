//! The UDP transport on loopback: subnets, the greeting, datagrams, reports.

use super::*;
use crate::comm::local::LocalTransport;

#[test]
fn subnet_parsing_and_membership() {
    let s: Subnet = "10.99.0.0/24".parse().unwrap();
    assert!(s.contains("10.99.0.7".parse().unwrap()));
    assert!(!s.contains("10.98.0.7".parse().unwrap()));
    assert!("0.0.0.0/0"
        .parse::<Subnet>()
        .unwrap()
        .contains(Ipv4Addr::LOCALHOST));
    for bad in ["10.99.0.0", "10.99.0/24", "10.99.0.0/33", "x/8"] {
        assert!(bad.parse::<Subnet>().is_err(), "{bad}");
    }
}

/// Three ranks on threads: collectives in process, datagrams over 127.0.0.1.
#[test]
fn greeting_and_datagrams_on_loopback() {
    let opts = UdpOptions {
        subnet: Some("127.0.0.0/8".parse().unwrap()),
        port_base: None,
        ..Default::default()
    };
    let handles: Vec<_> = LocalTransport::network(3)
        .into_iter()
        .map(|local| {
            std::thread::spawn(move || {
                let t = UdpTransport::connect(&local, &opts).unwrap();
                let r = t.rank();
                let data: Vec<f32> = (0..10).map(|i| (100 * r + i) as f32).collect();
                let send = [true, false, true, true];
                let framing = Some(Framing {
                    prefix: 2,
                    fragment: 3,
                    send: &send,
                });
                let to = (r + 1) % 3;
                let outgoing = [Outgoing {
                    to,
                    tag: 5,
                    data: &data,
                    framing,
                }];
                let mut got = Collect(Vec::new(), 2);
                let deadline = Instant::now() + Duration::from_secs(5);
                t.exchange_until(&outgoing, deadline, &mut got).unwrap();
                t.quiesce(&mut Collect(Vec::new(), 0));
                (r, got.0, t.rejected())
            })
        })
        .collect();
    for h in handles {
        let (r, mut got, rejected) = h.join().unwrap();
        let from = (r + 2) % 3;
        let base = (100 * from) as f32;
        got.sort_by_key(|g| g.2);
        // The body (elements 2..) in fragments of 3: the second is not sent.
        let expect = vec![
            (
                from,
                5,
                0,
                vec![base, base + 1.0, base + 2.0, base + 3.0, base + 4.0],
            ),
            (from, 5, 6, vec![base, base + 1.0, base + 8.0, base + 9.0]),
        ];
        assert_eq!(got, expect, "rank {r}");
        assert_eq!(rejected, 0);
    }
}

/// Two ranks with a loss budget exchange 100 datagrams each way over loopback:
/// reports flow back and measure no loss. Then rank 0 sends rank 1 reports no
/// receiver could make (more datagrams than rank 1 ever sent; the wrong size): each
/// is refused and counted in `rejected`, and the link's rate does not move. Without
/// a budget, a report is refused too.
#[test]
fn reports_measure_the_link_and_bad_ones_are_refused() {
    let budget = Budget {
        target_ppm: 50_000,
        link_rate: 1_000_000_000,
    };
    let handles: Vec<_> = LocalTransport::network(2)
        .into_iter()
        .map(|local| {
            std::thread::spawn(move || {
                let opts = UdpOptions {
                    subnet: Some("127.0.0.0/8".parse().unwrap()),
                    budget: Some(budget),
                    ..Default::default()
                };
                let t = UdpTransport::connect(&local, &opts).unwrap();
                let (r, peer) = (t.rank(), 1 - t.rank());
                let data = vec![r as f32; 300];
                let framing = Some(Framing {
                    prefix: 0,
                    fragment: 3,
                    send: &[],
                });
                let out = [Outgoing {
                    to: peer,
                    tag: 1,
                    data: &data,
                    framing,
                }];
                let deadline = Instant::now() + Duration::from_secs(5);
                t.exchange_until(&out, deadline, &mut Collect(Vec::new(), 100))
                    .unwrap();
                t.quiesce(&mut Collect(Vec::new(), 0));
                let measured = t.links.borrow()[peer].intervals;
                let rate = t.links.borrow()[peer].rate;
                let early = t.rejected();
                // Both have drained before the forgeries go out.
                t.barrier();
                if r == 0 {
                    let forged = [
                        Report {
                            accepted: 5,
                            highest: 1_000_000,
                        }
                        .to_bytes()
                        .to_vec(),
                        vec![0u8; 12],
                    ];
                    for payload in &forged {
                        t.queue(peer, REPORT_TAG, 0, |slot, h| {
                            encode_bytes_into(slot, &t.job, peer, h, payload)
                        });
                    }
                    t.flush();
                }
                t.quiesce(&mut Collect(Vec::new(), 0));
                let after = t.links.borrow()[peer].rate;
                (r, measured, rate, after, t.rejected() - early, early)
            })
        })
        .collect();
    for h in handles {
        let (r, measured, rate, after, rejected, early) = h.join().unwrap();
        assert_eq!(early, 0, "rank {r}: rejected before the forgeries");
        assert_eq!(
            measured, 1,
            "rank {r}: one interval of 100 datagrams measured"
        );
        // No loss on loopback: probed up, capped at the top.
        assert_eq!(rate, budget.max_rate(), "rank {r}");
        assert_eq!(after, rate, "rank {r}");
        assert_eq!(rejected, if r == 1 { 2 } else { 0 }, "rank {r}");
    }
    // Without a budget nobody expects reports.
    let plain = std::thread::scope(|s| {
        let hs: Vec<_> = LocalTransport::network(2)
            .into_iter()
            .map(|local| {
                s.spawn(move || {
                    let opts = UdpOptions {
                        subnet: Some("127.0.0.0/8".parse().unwrap()),
                        ..Default::default()
                    };
                    let t = UdpTransport::connect(&local, &opts).unwrap();
                    if t.rank() == 0 {
                        let report = Report::default().to_bytes();
                        t.queue(1, REPORT_TAG, 0, |slot, h| {
                            encode_bytes_into(slot, &t.job, 1, h, &report)
                        });
                        t.flush();
                    }
                    t.quiesce(&mut Collect(Vec::new(), 0));
                    t.rejected()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(plain, vec![0, 1]);
}

/// Records deliveries; complete after `.1` of them.
struct Collect(Vec<(usize, i32, usize, Vec<f32>)>, usize);

impl Mailbox for Collect {
    fn deliver(&mut self, from: usize, tag: i32, data: &[f32], offset: usize, _late: bool) {
        self.0.push((from, tag, offset, data.to_vec()));
    }
    fn complete(&self) -> bool {
        self.1 > 0 && self.0.len() >= self.1
    }
}
