//! The CSV file of `rps bench-exchange --csv`, read back: its header (which the writer in
//! `output.rs` writes and `crate::results` recognises), its rows, and their table for
//! `rps report`.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

/// The CSV header; `crate::results` recognises bench-exchange files by it.
pub const CSV_HEADER: &str =
    "op,mode,n,bytes,p,median_ms,p25_ms,p75_ms,min_ms,max_ms,wire_bytes,sent,dropped";

/// One row of a bench-exchange CSV file.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvRow {
    pub op: String,
    pub mode: String,
    pub n: usize,
    pub bytes: f64,
    pub p: Option<f64>,
    pub median_ms: f64,
}

/// Whether `path` is a CSV file written by `rps bench-exchange` (by its header).
pub fn is_csv(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.lines().next() == Some(CSV_HEADER))
}

/// Reads every row of the given files.
///
/// # Errors
/// An unreadable file, a foreign header, or a malformed line (named by file and line).
pub fn read(paths: &[PathBuf]) -> Result<Vec<CsvRow>> {
    let mut rows = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut lines = text.lines();
        ensure!(
            lines.next() == Some(CSV_HEADER),
            "{}: not a bench-exchange CSV file (header {CSV_HEADER:?})",
            path.display()
        );
        for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let row = parse(line)
                .with_context(|| format!("{} line {}: {line:?}", path.display(), i + 2))?;
            rows.push(row);
        }
    }
    Ok(rows)
}

fn parse(line: &str) -> Result<CsvRow> {
    let f: Vec<&str> = line.split(',').collect();
    ensure!(
        f.len() == CSV_HEADER.split(',').count(),
        "wrong number of fields"
    );
    Ok(CsvRow {
        op: f[0].to_string(),
        mode: f[1].to_string(),
        n: f[2].parse()?,
        bytes: f[3].parse()?,
        p: match f[4] {
            "" => None,
            p => Some(p.parse()?),
        },
        median_ms: f[5].parse()?,
    })
}

/// The rows as a Markdown table (`rps report EXCHANGE.csv...`), in file order.
pub fn markdown(rows: &[CsvRow]) -> String {
    let mut s =
        String::from("| op | mode | n | bytes | p | median ms |\n|---|---|---|---|---|---|\n");
    for r in rows {
        let p = r.p.map_or(String::new(), |p| p.to_string());
        s += &format!(
            "| {} | {} | {} | {} | {p} | {:.4} |\n",
            r.op, r.mode, r.n, r.bytes, r.median_ms
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rows_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("a.csv");
        std::fs::write(
            &good,
            format!("{CSV_HEADER}\nrps,colocated,4,1000000,0.1,0.5,0.4,0.6,0.3,0.9,2e6,12,1\npair,-,4,1000000,,0.1,0.1,0.1,0.1,0.1,,,\n"),
        )
        .unwrap();
        assert!(is_csv(&good));
        let rows = read(std::slice::from_ref(&good)).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].n, rows[0].p, rows[0].median_ms),
            (4, Some(0.1), 0.5)
        );
        assert_eq!(rows[1].p, None);
        let table = markdown(&rows);
        assert!(
            table.contains("| rps | colocated | 4 | 1000000 | 0.1 | 0.5000 |"),
            "{table}"
        );
        let bad = dir.path().join("b.csv");
        std::fs::write(&bad, format!("{CSV_HEADER}\nrps,colocated,x\n")).unwrap();
        let e = format!("{:#}", read(&[bad]).unwrap_err());
        assert!(e.contains("b.csv line 2"), "{e}");
    }
}
