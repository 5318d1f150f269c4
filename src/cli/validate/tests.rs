//! The checks of `rps train`'s flags, one by one, and the configuration they build.

use super::*;

/// The flags of `rps train --dataset d.h5 --metrics m.h5 --drop-rate 0.1 EXTRA...`.
fn flags(extra: &[&str]) -> TrainFlags {
    let base = "--dataset d.h5 --metrics m.h5 --drop-rate 0.1".split(' ');
    crate::cli::parse_train(base.chain(extra.iter().copied())).expect("flags parse")
}

fn check(extra: &[&str], size: usize) -> Result<TrainConfig, ConfigError> {
    train_config(&flags(extra), size, String::new())
}

#[test]
fn defaults_are_one_server_one_epoch() {
    let c = check(&[], 5).unwrap();
    assert_eq!(c.mode, Mode::Dedicated { servers: 1 });
    assert_eq!(c.duration, Duration::Epochs(1));
    assert_eq!(c.batch_size, 32);
    assert_eq!(c.transport, TransportKind::Mpi);
}

#[test]
fn rejects_bad_values_by_name() {
    let prob = |flag, value| ConfigError::Probability { flag, value };
    let cases: Vec<(&[&str], ConfigError)> = vec![
        (&["--drop-rate", "1.5"], prob("drop-rate", 1.5)),
        (&["--drop-rate", "-0.1"], prob("drop-rate", -0.1)),
        (&["--drop-down", "2"], prob("drop-down", 2.0)),
        (&["--packet-bytes", "6"], ConfigError::PacketBytes(6)),
        (&["--chunk-bytes", "0"], ConfigError::ChunkBytes(0)),
        (&["--chunk-bytes", "10"], ConfigError::ChunkBytes(10)),
        (
            &["--chunk-bytes", "4096", "--detect", "deadline"],
            ConfigError::ChunkWithDeadline,
        ),
        (
            &[
                "--drop-rate",
                "0",
                "--chunk-bytes",
                "4096",
                "--algorithm",
                "allreduce",
            ],
            ConfigError::DropWithAllreduce("chunk-bytes"),
        ),
        (
            &["--drop-model", "gilbert-elliott"],
            ConfigError::GilbertElliottWith("drop-rate/--drop-up/--drop-down"),
        ),
        (
            &["--replay-trace", "t.h5"],
            ConfigError::ReplayWith("drop-rate"),
        ),
        (&["--batch-size", "0"], ConfigError::BatchSize),
        (
            &["--steps", "0"],
            ConfigError::ZeroDuration { flag: "steps" },
        ),
        (&["--lr", "0"], ConfigError::LearningRate(0.0)),
        (&["--momentum", "1"], ConfigError::Momentum(1.0)),
        (&["--weight-decay", "-1"], ConfigError::WeightDecay(-1.0)),
        (&["--label-skew", "0"], ConfigError::LabelSkew(0.0)),
        (
            &["--label-skew", "inf"],
            ConfigError::LabelSkew(f64::INFINITY),
        ),
        (&["--servers", "0"], ConfigError::NoServers),
        (
            &["--servers", "5"],
            ConfigError::NoWorkers {
                servers: 5,
                size: 5,
                need: 6,
            },
        ),
        (
            &["--algorithm", "allreduce"],
            ConfigError::DropWithAllreduce("drop-rate"),
        ),
        (
            &["--detect", "deadline", "--recv-timeout-ms", "0"],
            ConfigError::Timeout(0),
        ),
        (
            &["--detect", "deadline", "--recv-timeout-ms", "100000000"],
            ConfigError::Timeout(100_000_000),
        ),
        (&["--transport", "udp"], ConfigError::UdpWithoutDeadline),
        (
            &["--udp-mtu", "9000"],
            ConfigError::UdpFlagWithoutUdp("udp-mtu"),
        ),
        (
            &["--loss-target", "0.05"],
            ConfigError::UdpFlagWithoutUdp("loss-target"),
        ),
        (
            &[
                "--transport",
                "udp",
                "--detect",
                "deadline",
                "--loss-target",
                "0.7",
            ],
            ConfigError::LossTarget(0.7),
        ),
        (
            &[
                "--transport",
                "udp",
                "--detect",
                "deadline",
                "--loss-target",
                "0",
            ],
            ConfigError::LossTarget(0.0),
        ),
        (
            &[
                "--transport",
                "udp",
                "--detect",
                "deadline",
                "--udp-link-rate",
                "1G",
            ],
            ConfigError::LinkRateWithoutBudget,
        ),
        (
            &["--checkpoint-every", "3"],
            ConfigError::CheckpointWithoutDir,
        ),
        (
            &["--lr-milestones", "0.5"],
            ConfigError::LrFlag("lr-milestones"),
        ),
        (
            &["--lr-schedule", "step"],
            ConfigError::LrMilestones("give at least one".into()),
        ),
        (
            &["--lr-schedule", "step", "--lr-milestones", "0.5,1.5"],
            ConfigError::LrMilestones(
                "1.5 is neither a fraction of the run (below 1) nor a whole step number".into(),
            ),
        ),
        (
            &["--diag-every", "5", "--detect", "deadline"],
            ConfigError::DiagWithDeadline,
        ),
        (
            &["--ranks", "4"],
            ConfigError::Ranks {
                expected: 4,
                found: 5,
            },
        ),
    ];
    for (extra, expected) in cases {
        assert_eq!(check(extra, 5).unwrap_err(), expected, "{extra:?}");
    }
    assert!(check(&["--drop-rate", "NaN"], 5).is_err());
    // clap itself refuses what cannot be parsed or contradicts by declaration.
    assert!(crate::cli::parse_train([
        "--dataset",
        "d",
        "--metrics",
        "m",
        "--steps",
        "3",
        "--epochs",
        "1"
    ])
    .is_err());
    assert!(crate::cli::parse_train([
        "--dataset",
        "d",
        "--metrics",
        "m",
        "--servers",
        "1",
        "--colocated"
    ])
    .is_err());
}

#[test]
fn flags_of_a_mode_that_is_off_are_listed() {
    let f = flags(&[
        "--lr-gamma",
        "0.1",
        "--ge-r",
        "0.5",
        "--recv-timeout-ms",
        "9",
    ]);
    assert_eq!(
        ignored_flags(&f),
        [
            "--lr-gamma is ignored: it applies to --lr-schedule step only",
            "--ge-r is ignored: it applies to --drop-model gilbert-elliott only",
            "--recv-timeout-ms is ignored: it applies to --detect deadline only",
        ]
    );
    let on = flags(&[
        "--lr-gamma=0.1",
        "--lr-schedule=step",
        "--lr-milestones=0.5",
        "--detect=deadline",
        "--recv-timeout-ms=9",
    ]);
    assert!(ignored_flags(&on).is_empty());
    assert!(
        ignored_flags(&flags(&[])).is_empty(),
        "defaults are not given"
    );
    // A UDP flag given at its default value is refused like any other value.
    assert_eq!(
        check(&["--udp-mtu", "1500"], 5).unwrap_err(),
        ConfigError::UdpFlagWithoutUdp("udp-mtu")
    );
}

#[test]
fn drop_specs() {
    let c = check(&["--drop-up", "0.2"], 5).unwrap();
    assert_eq!(c.drop, DropSpec::Bernoulli { up: 0.2, down: 0.1 });
    let ge = check(&["--drop-rate", "0", "--drop-model", "gilbert-elliott"], 5);
    assert!(matches!(ge.unwrap().drop, DropSpec::GilbertElliott(_)));
    let links = check(&["--link-rates", "l.txt"], 5).unwrap();
    assert!(matches!(links.drop, DropSpec::PerLink { .. }));
    let lossless = check(&["--drop-rate", "0", "--algorithm", "allreduce"], 5);
    assert!(lossless.unwrap().drop.is_lossless());
}

#[test]
fn udp_packets_default_to_what_fits_the_mtu() {
    let c = check(&["--transport", "udp", "--detect", "deadline"], 3).unwrap();
    assert_eq!(c.packet_bytes, Some(1396));
    let big = check(
        &[
            "--transport",
            "udp",
            "--detect",
            "deadline",
            "--packet-bytes",
            "4000",
        ],
        3,
    );
    assert_eq!(
        big.unwrap_err(),
        ConfigError::UdpPacketBytes {
            bytes: 4000,
            max: 1396
        }
    );
}

#[test]
fn single_rank_needs_colocated() {
    assert!(check(&[], 1).is_err());
    assert_eq!(check(&["--colocated"], 1).unwrap().mode, Mode::Colocated);
}
