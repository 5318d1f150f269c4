//! `--transport udp` under real mpirun on this host: the datagram exchange reproduces the
//! reliable one when nothing is lost, and a stream of garbage, truncated and foreign
//! datagrams aimed at the ranks' sockets is refused, counted, and changes nothing.

mod common;
use common::*;

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
    assert_eq!(
        read_params(&model(&datagrams)),
        read_params(&model(&reliable))
    );
}

/// Datagrams an attacker (or a confused neighbour) might send: each is refused before
/// it reaches the model.
fn hostile() -> Vec<Vec<u8>> {
    let mut header = Vec::new();
    header.extend_from_slice(&0x5250_5331u32.to_le_bytes()); // the real magic
    header.extend_from_slice(&0u64.to_le_bytes()); // a guessed token
    header.extend_from_slice(&0u32.to_le_bytes()); // claims to be rank 0
    header.extend_from_slice(&0i32.to_le_bytes()); // tag
    header.extend_from_slice(&u32::MAX.to_le_bytes()); // offset far out of range
    header.extend_from_slice(&3u16.to_le_bytes()); // prefix
    header.extend_from_slice(&0u16.to_le_bytes());
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
    assert_eq!(read_params(&model(&attacked)), read_params(&model(&clean)));
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
