//! `--transport udp` under real mpirun on this host: the datagram exchange reproduces the
//! reliable one when nothing is lost; a stream of garbage, truncated and foreign
//! datagrams aimed at the ranks' sockets, and an attacker who reads the job's datagrams
//! and sends with the ranks' own addresses (replays and forgeries with the right token),
//! are refused, counted, and change nothing.

mod common;
use common::*;

use rps::comm::udp::HEADER_BYTES;
use std::net::UdpSocket;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const STEPS: &str = "12";

/// The final model saved next to a run's metrics.
fn model(metrics: &Path) -> std::path::PathBuf {
    metrics.with_extension("model.h5")
}

fn train(metrics: &Path, extra: &[&str]) -> Run {
    let data = small_dataset();
    let saved = model(metrics);
    let mut a = vec![
        "train",
        "--save-model",
        saved.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--metrics",
        metrics.to_str().unwrap(),
        "--colocated",
        "--steps",
        STEPS,
        "--batch-size",
        "8",
        "--eval-every",
        "6",
        "--force",
    ];
    a.extend_from_slice(extra);
    mpirun(3, &a)
}

fn udp(port: Option<&str>) -> Vec<&str> {
    let mut a = vec![
        "--transport",
        "udp",
        "--detect",
        "deadline",
        "--recv-timeout-ms",
        "3000",
        "--udp-subnet",
        "127.0.0.0/8",
    ];
    if let Some(p) = port {
        a.extend(["--udp-port", p]);
    }
    a
}

/// Asserts that two runs saved the same model, bit for bit (a short message, not two
/// million numbers, when they differ).
fn assert_same_model(run: &Path, reference: &Path) {
    let (a, b) = (read_params(&model(run)), read_params(&model(reference)));
    assert_eq!(a.len(), b.len());
    let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits());
    let nan = a.iter().filter(|x| x.is_nan()).count();
    assert_eq!(
        differ.count(),
        0,
        "parameters differ from the reference run ({nan} of {} are NaN)",
        a.len()
    );
}

fn total(path: &Path, name: &str) -> u64 {
    read_u64(path, name).iter().sum()
}

#[test]
fn udp_without_loss_reproduces_the_reliable_exchange() {
    let dir = out_dir();
    let (reliable, datagrams) = (dir.path().join("mpi.h5"), dir.path().join("udp.h5"));
    train(&reliable, &[]).assert_ok();
    let run = train(&datagrams, &udp(None));
    run.assert_ok();
    assert_eq!(attr_str(&datagrams, "transport"), "udp");
    // Loopback loses nothing: every packet sent arrived in time, and the model is the
    // reliable run's, bit for bit.
    assert!(total(&datagrams, "comm/packets_up") > 0);
    assert_eq!(total(&datagrams, "comm/packets_missed_up"), 0);
    assert_eq!(total(&datagrams, "comm/packets_missed_down"), 0);
    assert_eq!(total(&datagrams, "comm/rejected"), 0);
    assert_same_model(&datagrams, &reliable);
}

/// Datagrams an attacker (or a confused neighbour) might send: each is refused before
/// it reaches the model.
fn hostile() -> Vec<Vec<u8>> {
    let mut header = Vec::new();
    header.extend_from_slice(&0x5250_5332u32.to_le_bytes()); // the real magic
    header.extend_from_slice(&0u64.to_le_bytes()); // a guessed token
    header.extend_from_slice(&0u32.to_le_bytes()); // claims to be rank 0
    header.extend_from_slice(&0i32.to_le_bytes()); // tag
    header.extend_from_slice(&u32::MAX.to_le_bytes()); // offset far out of range
    header.extend_from_slice(&3u16.to_le_bytes()); // prefix
    header.resize(HEADER_BYTES, 0); // reserved, sequence number, MAC
    let mut full = header.clone();
    full.extend((0..64).flat_map(|i| (i as f32).to_le_bytes()));
    vec![
        vec![],
        vec![0xff; 7],
        (0..1400u32).map(|i| (i * 131 % 251) as u8).collect(), // noise
        header[..20].to_vec(),                                 // truncated header
        full.clone(),                                          // forged header
        full[..full.len() - 1].to_vec(),                       // a partial float
    ]
}

#[test]
fn hostile_datagrams_are_refused_and_change_nothing() {
    let dir = out_dir();
    let (clean, attacked) = (dir.path().join("clean.h5"), dir.path().join("attacked.h5"));
    // Ports for this test's three ranks, spread by process id against collisions.
    let base = 40000 + (std::process::id() % 8000) * 3;
    let port = base.to_string();
    train(&clean, &udp(None)).assert_ok();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for d in hostile() {
                    for r in 0..3 {
                        // Refused sends (no socket bound yet) are fine.
                        if socket.send_to(&d, ("127.0.0.1", (base + r) as u16)).is_ok() {
                            sent += 1;
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            sent
        })
    };
    let run = train(&attacked, &udp(Some(&port)));
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    run.assert_ok();
    assert!(sent > 0);
    let rejected = total(&attacked, "comm/rejected");
    assert!(rejected > 0, "no hostile datagram was counted");
    assert_eq!(total(&attacked, "comm/packets_missed_up"), 0);
    assert_eq!(total(&attacked, "comm/packets_missed_down"), 0);
    // Same seed, same exchange: the hostile traffic changed nothing in the model.
    assert_same_model(&attacked, &clean);
}

/// An attacker on the path, as in issue 13: reads every datagram of the job (a raw
/// socket) and sends datagrams with any rank's source address, so the token, the
/// address check and the message header are all right. From every 16th datagram it
/// makes a replay of it as it is, and copies for the next two steps with every body
/// element NaN (the message header — step, direction, block, packets — is the prefix of
/// the payload). Returns (datagrams read, datagrams sent), or `None` where raw sockets
/// are not permitted (not root).
fn sniff_and_forge(base: u16, stop: &AtomicBool) -> Option<(u64, u64)> {
    // SAFETY: plain socket calls on a descriptor owned here; every buffer passed
    // outlives its call and its length is the one given.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
    if fd < 0 {
        return None;
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 2000,
    };
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let ranks = base..base + 3;
    let mut sent_by_us = std::collections::HashSet::new();
    let (mut read, mut sent) = (0u64, 0u64);
    let mut buf = vec![0u8; 65536];
    let send = |src_port: u16, dst_port: u16, payload: &[u8]| {
        // UDP header (checksum 0: none, valid for IPv4), then the payload; the kernel
        // adds the IP header from 127.0.0.1.
        let mut packet = Vec::with_capacity(8 + payload.len());
        packet.extend_from_slice(&src_port.to_be_bytes());
        packet.extend_from_slice(&dst_port.to_be_bytes());
        packet.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        packet.extend_from_slice(&0u16.to_be_bytes());
        packet.extend_from_slice(payload);
        let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let rc = unsafe {
            libc::sendto(
                fd,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        rc > 0
    };
    while !stop.load(Ordering::Relaxed) {
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        // The IP header, then the UDP header.
        let ip = &buf[..n as usize];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip.len() < ihl + 8 {
            continue;
        }
        let port = |i: usize| u16::from_be_bytes([ip[ihl + i], ip[ihl + i + 1]]);
        let (src_port, dst_port) = (port(0), port(2));
        let payload = &ip[ihl + 8..];
        if !ranks.contains(&src_port) || !ranks.contains(&dst_port) {
            continue;
        }
        if sent_by_us.contains(payload) {
            continue;
        }
        read += 1;
        // Only datagrams of the exchange: a message header after the datagram header.
        let prefix = usize::from(u16::from_le_bytes([payload[24], payload[25]]));
        let body = HEADER_BYTES + 4 * prefix;
        if read % 16 != 0 || prefix < 6 || payload.len() <= body {
            continue;
        }
        let mut forgeries = vec![payload.to_vec()];
        let word = |d: &[u8], i: usize| {
            u32::from_le_bytes(
                d[HEADER_BYTES + 4 * i..HEADER_BYTES + 4 * i + 4]
                    .try_into()
                    .unwrap(),
            )
        };
        let step = u64::from(word(payload, 0)) | u64::from(word(payload, 1)) << 32;
        for ahead in 1..=2 {
            let mut f = payload.to_vec();
            f[HEADER_BYTES..HEADER_BYTES + 8].copy_from_slice(&(step + ahead).to_le_bytes());
            for x in f[body..].chunks_exact_mut(4) {
                x.copy_from_slice(&f32::NAN.to_le_bytes());
            }
            forgeries.push(f);
        }
        for f in forgeries {
            if send(src_port, dst_port, &f) {
                sent += 1;
            }
            sent_by_us.insert(f);
        }
    }
    unsafe { libc::close(fd) };
    Some((read, sent))
}

#[test]
fn sniffed_token_and_spoofed_source_change_nothing() {
    let dir = out_dir();
    let (clean, attacked) = (dir.path().join("clean.h5"), dir.path().join("attacked.h5"));
    // Ports apart from the other test's (40000 and up).
    let base = 20000 + (std::process::id() % 6000) as u16 * 3;
    let port = base.to_string();
    train(&clean, &udp(None)).assert_ok();
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || sniff_and_forge(base, &stop))
    };
    let run = train(&attacked, &udp(Some(&port)));
    stop.store(true, Ordering::Relaxed);
    let Some((read, forged)) = attacker.join().unwrap() else {
        eprintln!("skipped: raw sockets need root (CAP_NET_RAW)");
        return;
    };
    run.assert_ok();
    assert!(read > 0 && forged > 0, "read {read}, forged {forged}");
    // Same seed, same exchange: the forgeries and replays changed nothing.
    assert_same_model(&attacked, &clean);
    let rejected = total(&attacked, "comm/rejected");
    eprintln!("attacker read {read} datagrams, sent {forged}; ranks rejected {rejected}");
    // Nearly every forgery reaches a rank while it still reads its socket.
    assert!(
        rejected >= forged / 2,
        "{rejected} of {forged} forged datagrams counted as rejected"
    );
    assert_eq!(total(&attacked, "comm/packets_missed_up"), 0);
    assert_eq!(total(&attacked, "comm/packets_missed_down"), 0);
}

#[test]
fn udp_flag_errors_name_the_flag() {
    let dir = out_dir();
    let m = dir.path().join("m.h5");
    let run = train(&m, &["--transport", "udp"]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr
            .contains("--transport udp needs --detect deadline"),
        "{}",
        run.stderr
    );
    let run = train(&m, &["--udp-port", "5000"]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr
            .contains("--udp-port applies to --transport udp only"),
        "{}",
        run.stderr
    );
    let mut a = udp(None);
    a.extend(["--packet-bytes", "4000"]);
    let run = train(&m, &a);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("--packet-bytes 4000 is too large"),
        "{}",
        run.stderr
    );
    let mut a = udp(None);
    a[7] = "10.123.45.0/24"; // a network this host has no address in
    let run = train(&m, &a);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains(
            "no interface of this host has an IPv4 address in --udp-subnet 10.123.45.0/24"
        ),
        "{}",
        run.stderr
    );
    assert!(!m.exists(), "a failed start left a metrics file");
}
