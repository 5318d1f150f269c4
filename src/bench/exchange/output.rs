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
        let pairs = fields(r, n, opt).map(|(k, v)| format!("{k}={v}"));
        println!("bench-exchange {}", pairs.join(" "));
    }
}

pub(super) fn write_csv(file: &mut File, rows: &[Row], n: usize) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(file);
    writeln!(w, "{CSV_HEADER}")?;
    let cell = |x: Option<f64>, _| x.map_or(String::new(), |v| v.to_string());
    for r in rows {
        writeln!(w, "{}", fields(r, n, cell).map(|(_, v)| v).join(","))?;
    }
    w.flush()
}

/// The fields of a row of a job of `n` ranks, named as the CSV header names them, in its
/// order (the machine-readable lines and the CSV are written from this one list);
/// `count(value, digits)` writes the optional ones.
fn fields(
    r: &Row,
    n: usize,
    count: impl Fn(Option<f64>, usize) -> String,
) -> [(&'static str, String); 13] {
    let ms = |v: f64| format!("{v:.6}");
    [
        ("op", r.op.name().to_string()),
        ("mode", r.mode.to_string()),
        ("n", n.to_string()),
        ("bytes", r.bytes.to_string()),
        ("p", count(r.p, 3)),
        ("median_ms", ms(r.time.median)),
        ("p25_ms", ms(r.time.p25)),
        ("p75_ms", ms(r.time.p75)),
        ("min_ms", ms(r.time.min)),
        ("max_ms", ms(r.time.max)),
        ("wire_bytes", count(r.wire_bytes, 1)),
        ("sent", count(r.sent, 3)),
        ("dropped", count(r.dropped, 3)),
    ]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Spread;

    /// The machine-readable lines and the CSV come from one list of fields, named as the
    /// CSV header names its columns.
    #[test]
    fn the_fields_are_the_csv_header_and_both_formats_read_them() {
        let time = Spread {
            median: 1.5,
            p25: 1.0,
            p75: 2.0,
            min: 0.5,
            max: 3.0,
        };
        let r = Row {
            op: Op::Rps,
            mode: "colocated",
            bytes: 4000,
            p: Some(0.1),
            time,
            wire_bytes: None,
            sent: Some(12.0),
            dropped: Some(1.0),
        };
        let names: Vec<&str> = fields(&r, 4, opt).iter().map(|(k, _)| *k).collect();
        assert_eq!(names.join(","), CSV_HEADER);
        let values: Vec<String> = fields(&r, 4, opt).into_iter().map(|(_, v)| v).collect();
        assert_eq!(values[..5], ["rps", "colocated", "4", "4000", "0.100"]);
        assert_eq!(values[5], "1.500000");
        assert_eq!(values[10..], ["-", "12.000", "1.000"]);
    }
}
