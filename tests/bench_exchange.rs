//! `rps bench-exchange` under real mpirun, with tiny buffers and few repeats: the report
//! ends with one parseable ratio line per size and mode, the CSV holds every row, and bad
//! options stop every rank with a message naming the flag (the figures are not checked).

mod common;
use common::*;

const TINY: [&str; 8] = [
    "bench-exchange",
    "--sizes",
    "4000,4e4",
    "--warmup",
    "1",
    "--repeats",
    "3",
    "--drop-rates=0,0.1",
];

/// The `(mode, bytes, n, ratio)` of every ratio line, which must be the last lines.
fn ratio_lines(stdout: &str) -> Vec<(String, u64, usize, f64)> {
    let lines: Vec<&str> = stdout.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.starts_with("ratio rps/allreduce"))
        .unwrap_or_else(|| panic!("no ratio line in\n{stdout}"));
    lines[first..]
        .iter()
        .map(|l| {
            let rest = l
                .strip_prefix("ratio rps/allreduce mode=")
                .unwrap_or_else(|| panic!("{l:?} after the first ratio line"));
            let (keys, ratio) = rest.split_once(": ").expect("ratio after ': '");
            let mut k = keys.split(' ');
            let mode = k.next().unwrap().to_string();
            let bytes = k.next().unwrap().strip_prefix("bytes=").unwrap().parse();
            let n = k.next().unwrap().strip_prefix("n=").unwrap().parse();
            (mode, bytes.unwrap(), n.unwrap(), ratio.parse().unwrap())
        })
        .collect()
}

#[test]
fn ends_with_one_ratio_line_per_size_and_mode() {
    let dir = out_dir();
    let csv = dir.path().join("sub/exchange.csv");
    for n in [2, 4] {
        let mut args = TINY.to_vec();
        args.extend(["--csv", csv.to_str().unwrap()]);
        let run = mpirun(n, &args);
        run.assert_ok();
        let ratios = ratio_lines(&run.stdout);
        let keys: Vec<(&str, u64)> = ratios.iter().map(|r| (r.0.as_str(), r.1)).collect();
        assert_eq!(
            keys,
            [
                ("dedicated", 4000),
                ("colocated", 4000),
                ("dedicated", 40000),
                ("colocated", 40000)
            ]
        );
        for (_, _, rn, r) in &ratios {
            assert_eq!(*rn, n);
            assert!(r.is_finite() && *r > 0.0, "{ratios:?}");
        }
        // p = 0 moves the whole buffer up and back per worker (dedicated, n/2 workers)
        // and n − 1 of n blocks per rank each way (co-located).
        let line = |op: &str, mode: &str, p: &str| {
            let prefix = format!("bench-exchange op={op} mode={mode} n={n} bytes=40000 p={p} ");
            run.stdout
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("no {prefix:?} in\n{}", run.stdout))
                .to_string()
        };
        let workers = n - n / 2;
        let wire = format!("wire_bytes={}.0 ", 2 * workers * 40000);
        assert!(line("rps", "dedicated", "0.000").contains(&wire));
        let wire = format!("wire_bytes={}.0 ", 2 * (n - 1) * 40000);
        assert!(line("rps", "colocated", "0.000").contains(&wire));
        assert!(line("rps", "colocated", "0.100").contains("dropped="));
        assert!(line("allreduce", "colocated", "-").contains("median_ms="));
        assert!(run
            .stdout
            .contains("rank-to-rank bandwidth: ranks 0 and 1 swap 40000 bytes"));
        let text = std::fs::read_to_string(&csv).unwrap();
        assert!(text.starts_with(rps::bench::exchange::CSV_HEADER), "{text}");
        // Per size: pair, memcpy, and per mode the two all-reduces (MPI's and the
        // fixed-order one) and one RPS row per rate.
        assert_eq!(text.lines().count(), 1 + 2 * (2 + 2 * 4), "{text}");
        assert!(line("allreduce-fixed", "colocated", "-").contains("median_ms="));
    }
}

#[test]
fn bad_options_stop_every_rank_naming_the_flag() {
    for (n, args, message) in [
        (2, vec!["--sizes", "0"], "--sizes: a buffer of 0 bytes"),
        (
            2,
            vec!["--drop-rates=0,1"],
            "--drop-rates: 1 is outside [0, 1)",
        ),
        (
            2,
            vec!["--drop-rates=0,-0.5"],
            "--drop-rates: -0.5 is outside",
        ),
        (
            1,
            vec!["--sizes", "400"],
            "--modes dedicated needs at least 2 ranks",
        ),
        // More than any machine's memory: refused up front, not an allocation abort.
        (
            2,
            vec!["--sizes", "4e5,1e12"],
            "--sizes: buffers of 1000000000000 bytes need about",
        ),
        (
            2,
            vec!["--sizes", "1e5x"],
            "invalid value '1e5x' for '--sizes",
        ),
    ] {
        let mut all = vec!["bench-exchange", "--repeats", "1"];
        all.extend(args);
        let run = mpirun(n, &all);
        assert_eq!(run.code, Some(2), "{all:?}: {}", run.stderr);
        assert!(run.stderr.contains(message), "{all:?}: {}", run.stderr);
        assert_eq!(
            run.stderr.matches("error").count(),
            1,
            "one rank speaks: {}",
            run.stderr
        );
        assert!(!run.stdout.contains("ratio"), "{}", run.stdout);
    }
}
