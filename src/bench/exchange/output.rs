//! What `rps bench-exchange` prints (the table, the `bench-exchange` lines, the ratio
//! lines that end the report) and writes (the CSV file that `rps plot` draws).

use std::fs::File;
use std::io::Write;

use super::csv::CSV_HEADER;
use super::{Op, Row};

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The human-readable table and the machine-readable lines.
pub(super) fn report(rows: &[Row], n: usize) {
    let largest = [
        (Op::Pair, "rank-to-rank", "ranks 0 and 1 swap", " each way"),
        (Op::Memcpy, "memcpy", "rank 0 copies", ""),
    ];
    for (op, what, who, way) in largest {
        if let Some(big) = rows.iter().rfind(|r| r.op == op) {
            let gbps = big.bytes as f64 / big.time.median / 1e6;
            println!(
                "{what} bandwidth: {who} {} bytes in {:.3} ms (median): {gbps:.2} GB/s{way}",
                big.bytes, big.time.median
            );
        }
    }
    println!(
        "\n{:<10} {:>11} {:<9} {:>4} {:>10} {:>19} {:>9} {:>13} {:>7} {:>7}",
        "mode",
        "bytes",
        "op",
        "p",
        "median ms",
        "IQR ms",
        "min ms",
        "wire bytes",
        "sent",
        "dropped"
    );
    for r in rows {
        let iqr = format!("{:.3}–{:.3}", r.time.p25, r.time.p75);
        println!(
            "{:<10} {:>11} {:<9} {:>4} {:>10.3} {:>19} {:>9.3} {:>13} {:>7} {:>7}",
            r.mode,
            r.bytes,
            r.op.name(),
            opt(r.p, 1),
            r.time.median,
            iqr,
            r.time.min,
            opt(r.wire_bytes, 0),
            opt(r.sent, 1),
            opt(r.dropped, 1)
        );
    }
    println!(
        "\nrps/allreduce at p = 0, of the medians and of the minima (the minima show what the"
    );
    println!("operations cost when no other process takes the core):");
    for (r, a) in pairs(rows) {
        println!("{}", ratio_line(r, a));
    }
    println!(
        "\nthe fixed-order all-reduce (rps's, used by --algorithm allreduce) over MPI_Allreduce:"
    );
    for f in rows.iter().filter(|r| r.op == Op::AllreduceFixed) {
        let native = rows
            .iter()
            .find(|a| a.op == Op::Allreduce && a.mode == f.mode && a.bytes == f.bytes);
        if let Some(a) = native {
            println!("{}", ratio_line(f, a));
        }
    }
    println!();
    for r in rows {
        println!(
            "bench-exchange op={} mode={} n={n} bytes={} p={} median_ms={:.6} p25_ms={:.6} p75_ms={:.6} min_ms={:.6} max_ms={:.6} wire_bytes={} sent={} dropped={}",
            r.op.name(),
            r.mode,
            r.bytes,
            opt(r.p, 3),
            r.time.median,
            r.time.p25,
            r.time.p75,
            r.time.min,
            r.time.max,
            opt(r.wire_bytes, 1),
            opt(r.sent, 3),
            opt(r.dropped, 3)
        );
    }
}

pub(super) fn write_csv(file: &mut File, rows: &[Row], n: usize) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(file);
    writeln!(w, "{CSV_HEADER}")?;
    let cell = |x: Option<f64>| x.map_or(String::new(), |v| v.to_string());
    for r in rows {
        writeln!(
            w,
            "{},{},{n},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{},{},{}",
            r.op.name(),
            r.mode,
            r.bytes,
            cell(r.p),
            r.time.median,
            r.time.p25,
            r.time.p75,
            r.time.min,
            r.time.max,
            cell(r.wire_bytes),
            cell(r.sent),
            cell(r.dropped)
        )?;
    }
    w.flush()
}

/// `r` against `a` of the same mode and size: the ratios of their medians and minima.
fn ratio_line(r: &Row, a: &Row) -> String {
    let (median, min) = (r.time.median / a.time.median, r.time.min / a.time.min);
    format!(
        "  {:<10} {:>11} bytes: {median:.3} (medians), {min:.3} (minima)",
        r.mode, r.bytes
    )
}

/// Each RPS row at p = 0 with the all-reduce row of its mode and size.
fn pairs(rows: &[Row]) -> impl Iterator<Item = (&Row, &Row)> {
    rows.iter()
        .filter(|r| r.op == Op::Rps && r.p == Some(0.0))
        .filter_map(|r| {
            let a = rows
                .iter()
                .find(|a| a.op == Op::Allreduce && a.mode == r.mode && a.bytes == r.bytes)?;
            Some((r, a))
        })
}

/// The last lines of the report: `ratio rps/allreduce mode=M bytes=B n=N: R`, per mode
/// and size, from the medians at p = 0 and of the all-reduce of the same mode and size.
pub(super) fn ratios(rows: &[Row], n: usize) {
    for (r, a) in pairs(rows) {
        println!(
            "ratio rps/allreduce mode={} bytes={} n={n}: {:.3}",
            r.mode,
            r.bytes,
            r.time.median / a.time.median
        );
    }
}
