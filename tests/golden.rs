//! Golden digests: short fixed runs of every model, mode and algorithm produce exactly
//! the digests committed in tests/golden/digests.txt, on any machine (results do not
//! depend on cache sizes, thread counts, the MPI library or the instruction set), and
//! again with the narrower kernels (`RPS_KERNELS=avx2`, `portable`) on in-process ranks.
//!
//! A change of numerics changes these digests. When that is the purpose of a commit,
//! rewrite the file with `RPS_UPDATE_GOLDEN=1 cargo test --release --test golden` and
//! commit it in the same commit, saying why the numbers changed.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rps::metrics::digest::Digest;

const GOLDEN: &str = "tests/golden/digests.txt";

/// One fixed run: a name, the number of ranks, its flags after the common ones.
struct Case {
    name: &'static str,
    ranks: usize,
    flags: &'static [&'static str],
}

const CASES: [Case; 6] = [
    Case {
        name: "cnn-colocated",
        ranks: 3,
        flags: &["--colocated", "--drop-rate", "0.2", "--momentum", "0.9"],
    },
    Case {
        name: "cnn-dedicated-packets",
        ranks: 3,
        flags: &[
            "--servers",
            "1",
            "--drop-rate",
            "0.1",
            "--packet-bytes",
            "4096",
        ],
    },
    Case {
        name: "cnn-allreduce",
        ranks: 3,
        flags: &["--algorithm", "allreduce", "--weight-decay", "0.0005"],
    },
    Case {
        name: "resnet20-colocated",
        ranks: 2,
        flags: &["--model", "resnet20", "--colocated", "--drop-rate", "0.1"],
    },
    Case {
        name: "mlp-colocated-bursty-diag",
        ranks: 4,
        flags: &[
            "--model",
            "mlp",
            "--colocated",
            "--drop-model",
            "gilbert-elliott",
            "--ge-p",
            "0.1",
            "--ge-r",
            "0.3",
            "--diag-every",
            "2",
            "--record-trace",
        ],
    },
    Case {
        name: "mlp-dedicated-cosine",
        ranks: 4,
        flags: &[
            "--model",
            "mlp",
            "--servers",
            "2",
            "--drop-rate",
            "0.3",
            "--lr-schedule",
            "cosine",
            "--warmup-steps",
            "2",
        ],
    },
];

/// Runs `case` (in-process when `local`, with extra environment) and returns its digests.
fn digests_of(case: &Case, dir: &Path, local: bool, env: &[(&str, &str)]) -> Vec<Digest> {
    let data = small_dataset();
    let (m, s) = (
        dir.join(format!("{}.h5", case.name)),
        dir.join(format!("{}-model.h5", case.name)),
    );
    let mut args = train_args(
        &data,
        &m,
        &[
            "--save-model",
            s.to_str().unwrap(),
            "--batch-size",
            "4",
            "--steps",
            "6",
            "--eval-every",
            "3",
            "--seed",
            "17",
            "--force",
        ],
    );
    args.extend(case.flags);
    let run = if local {
        local_ranks_env(case.ranks, &args, env)
    } else {
        mpirun(case.ranks, &args)
    };
    run.assert_ok();
    run_digests(&m, &s)
}

/// The golden file: run → dataset → digest.
fn read_golden(path: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut all: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut w = line.split_whitespace();
        if let (Some(run), Some(name), Some(hex)) = (w.next(), w.next(), w.next()) {
            all.entry(run.into())
                .or_default()
                .insert(name.into(), hex.into());
        }
    }
    all
}

fn write_golden(path: &Path, runs: &[(&str, Vec<Digest>)]) {
    let mut text = String::from(
        "# Golden digests of the short fixed runs of tests/golden.rs (run, dataset, SHA-256 prefix).\n\
         # Rewritten by RPS_UPDATE_GOLDEN=1 cargo test --release --test golden; commit a change\n\
         # only with the change of numerics that caused it, and say why in the commit.\n",
    );
    for (run, digests) in runs {
        for d in digests {
            text.push_str(&format!("{run} {} {}\n", d.name, d.hex));
        }
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn short_runs_reproduce_the_golden_digests_on_every_kernel_and_transport() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    let dir = out_dir();
    let mut runs = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let mpi = digests_of(case, dir.path(), false, &[]);
        // The narrower kernels, in turn, on in-process ranks: the same bits.
        let isa = ["avx2", "portable"][i % 2];
        let narrow = digests_of(case, dir.path(), true, &[("RPS_KERNELS", isa)]);
        let diff = differing(&mpi, &narrow);
        assert!(
            diff.is_empty(),
            "{}: RPS_KERNELS={isa} on in-process ranks differs from mpirun in {diff:?}",
            case.name
        );
        runs.push((case.name, mpi));
    }
    if std::env::var_os("RPS_UPDATE_GOLDEN").is_some() {
        write_golden(&path, &runs);
        return;
    }
    let golden = read_golden(&path);
    let mut changed = Vec::new();
    for (run, digests) in &runs {
        let want = golden.get(*run);
        for d in digests {
            if want.and_then(|w| w.get(&d.name)) != Some(&d.hex) {
                changed.push(format!("{run} {}", d.name));
            }
        }
        if want.map(|w| w.len()) != Some(digests.len()) {
            changed.push(format!("{run}: the set of datasets"));
        }
    }
    assert!(
        changed.is_empty(),
        "results differ from {GOLDEN} in:\n  {}\n\nIf this machine computes differently, that is a bug of \
         reproducibility. If a commit changed the numerics on purpose, rewrite the file with \
         RPS_UPDATE_GOLDEN=1 cargo test --release --test golden and commit it with the reason.",
        changed.join("\n  ")
    );
}
