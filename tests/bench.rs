//! `rps bench` end to end (tiny batches: the figures are not checked, only the report's
//! shape and the behaviour when the PyTorch reference cannot run).

mod common;
use common::*;

const TINY: [&str; 6] = ["--batch-sizes", "2,3", "--warmup", "0", "--repeats", "1"];

#[test]
fn reports_every_batch_and_stage_without_mpi() {
    let mut args = vec!["bench"];
    args.extend(TINY);
    let run = rps(&args);
    run.assert_ok();
    for line in [
        "rps bench: model cnn (1×28×28, 10 classes, 1663370 parameters)",
        "matrix-product peak",
        "machine: ",
        "kernels ",
        "round 5/5: peak",
        "rps batch=2: median",
        "rps batch=3: median",
        "over 5 rounds",
        "conv2+relu fwd",
        "conv2 bwd",
        "sgd update",
    ] {
        assert!(
            run.stdout.contains(line),
            "missing {line:?} in\n{}",
            run.stdout
        );
    }
    assert!(run.stdout.contains("peak RSS"), "{}", run.stdout);
    assert!(
        !run.stdout.contains("ratio rps/pytorch"),
        "no ratio without --pytorch"
    );
    let mut args = vec!["bench", "--model", "resnet20", "--image", "3,8,8"];
    args.extend(TINY);
    let run = rps(&args);
    run.assert_ok();
    assert!(
        run.stdout.contains("model resnet20 (3×8×8"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("stage3 bwd"), "{}", run.stdout);
}

#[test]
fn a_missing_reference_is_reported_and_fails_only_when_asked_for() {
    let mut args = vec!["bench", "--pytorch", "--python", "/nonexistent/python3"];
    args.extend(TINY);
    let run = rps(&args);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stdout.contains("rps batch=3: median"),
        "rps figures still printed"
    );
    assert!(
        run.stdout
            .contains("PyTorch reference unavailable: cannot start /nonexistent/python3"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("ratio rps/pytorch"));
    let bad = rps(&["bench", "--image", "1,28"]);
    assert_eq!(bad.code, Some(2));
    assert!(
        bad.stderr.contains("--image needs exactly three numbers"),
        "{}",
        bad.stderr
    );
}
