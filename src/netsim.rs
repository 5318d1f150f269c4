//! Results of the ns-3 datacenter simulation (`netsim/rps-netsim`, driven by
//! `netsim/run.sh`): its CSV files read back, summarized as a Markdown table
//! (`rps report FILE.csv`) and drawn by [`crate::plot`] (`rps plot FILE.csv`).
//!
//! The CSV is long ("tidy"): `policy,load,seed,quantity,class,value`, lines starting with
//! `#` are comments (the simulator writes its command line there).

use std::path::{Path, PathBuf};

use thiserror::Error;

/// The columns every results file starts with.
pub const HEADER: &str = "policy,load,seed,quantity,class,value";

/// The web-flow size classes, in the order tables and figures show them.
pub const CLASSES: [&str; 3] = ["<100KB", "100KB-1MB", ">1MB"];

#[derive(Debug, Error)]
pub enum NetsimError {
    #[error("{path}: cannot read it: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: not a netsim results file (first line that is not a comment must be `{HEADER}`)"
    )]
    Header { path: PathBuf },
    #[error("{path}, line {line}: {problem}")]
    Line {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("no netsim results files given")]
    Empty,
}

/// One measured quantity of one simulation run.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub policy: String,
    pub load: f64,
    pub seed: u64,
    pub quantity: String,
    /// Web-flow size class (`<100KB`, `100KB-1MB`, `>1MB`, `all`) or empty.
    pub class: String,
    /// NaN where the simulator had nothing to measure (e.g. no flow in a class).
    pub value: f64,
}

/// One simulation run: a policy at a load with a seed.
#[derive(Debug, Clone, PartialEq)]
pub struct RunKey {
    pub policy: String,
    pub load: f64,
    pub seed: u64,
}

/// The rows of one or more results files.
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub rows: Vec<Row>,
}

/// Whether a path names a netsim results file (by its `.csv` extension).
pub fn is_results_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

impl Results {
    /// Reads and concatenates results files.
    ///
    /// # Errors
    /// An unreadable file, a missing header, or a malformed line (named by file and line).
    pub fn read(paths: &[PathBuf]) -> Result<Self, NetsimError> {
        if paths.is_empty() {
            return Err(NetsimError::Empty);
        }
        let mut out = Results::default();
        for p in paths {
            let text = std::fs::read_to_string(p).map_err(|source| NetsimError::Io {
                path: p.clone(),
                source,
            })?;
            out.rows.extend(parse(p, &text)?);
        }
        Ok(out)
    }

    /// The runs in order of first appearance.
    pub fn runs(&self) -> Vec<RunKey> {
        let mut runs: Vec<RunKey> = Vec::new();
        for r in &self.rows {
            let k = RunKey {
                policy: r.policy.clone(),
                load: r.load,
                seed: r.seed,
            };
            if !runs.contains(&k) {
                runs.push(k);
            }
        }
        runs
    }

    /// The value of `quantity` (in `class`, "" for none) of one run.
    pub fn get(&self, run: &RunKey, quantity: &str, class: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| {
                r.policy == run.policy
                    && r.load == run.load
                    && r.seed == run.seed
                    && r.quantity == quantity
                    && r.class == class
            })
            .map(|r| r.value)
    }
}

fn parse(path: &Path, text: &str) -> Result<Vec<Row>, NetsimError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty());
    match lines.next() {
        Some((_, h)) if h.trim() == HEADER => {}
        _ => {
            return Err(NetsimError::Header {
                path: path.to_path_buf(),
            })
        }
    }
    let bad = |line: usize, problem: String| NetsimError::Line {
        path: path.to_path_buf(),
        line: line + 1,
        problem,
    };
    let mut rows = Vec::new();
    for (i, line) in lines {
        let f: Vec<&str> = line.trim().split(',').collect();
        if f.len() != 6 {
            return Err(bad(i, format!("{} fields, expected 6 ({HEADER})", f.len())));
        }
        let number = |s: &str, what: &str| -> Result<f64, NetsimError> {
            // The simulator writes "nan" where it has no sample.
            s.parse::<f64>()
                .map_err(|_| bad(i, format!("{what} `{s}` is not a number")))
        };
        rows.push(Row {
            policy: f[0].to_string(),
            load: number(f[1], "load")?,
            seed: f[2]
                .parse()
                .map_err(|_| bad(i, format!("seed `{}` is not a whole number", f[2])))?,
            quantity: f[3].to_string(),
            class: f[4].to_string(),
            value: number(f[5], "value")?,
        });
    }
    Ok(rows)
}

fn fmt_us(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() && v >= 10_000.0 => format!("{:.1} ms", v / 1000.0),
        Some(v) if v.is_finite() => format!("{v:.0} µs"),
        _ => "—".to_string(),
    }
}

/// A Markdown table, one row per run (sorted by load, then policy): web-flow FCT median /
/// 99th percentile per size class, flows completed, learning step time and loss.
pub fn markdown(results: &Results) -> String {
    let mut runs = results.runs();
    runs.sort_by(|a, b| {
        a.load
            .total_cmp(&b.load)
            .then(b.policy.cmp(&a.policy))
            .then(a.seed.cmp(&b.seed))
    });
    let mut s = String::from("| load | policy | seed | web flows completed |");
    for c in CLASSES {
        s += &format!(" FCT {c} p50 / p99 |");
    }
    s += " learning step p50 / p99 (ms) | learning datagrams lost |\n|";
    s += &"---|".repeat(6 + CLASSES.len());
    s += "\n";
    for r in &runs {
        let get = |q: &str, c: &str| results.get(r, q, c);
        let count = |q: &str| match get(q, "all") {
            Some(v) if v.is_finite() => v.to_string(),
            _ => "—".to_string(),
        };
        s += &format!(
            "| {} | {} | {} | {} of {} |",
            r.load,
            r.policy,
            r.seed,
            count("flows_completed"),
            count("flows")
        );
        for c in CLASSES {
            s += &format!(
                " {} / {} |",
                fmt_us(get("fct_p50_us", c)),
                fmt_us(get("fct_p99_us", c))
            );
        }
        let ms = |q: &str| match get(q, "") {
            Some(v) if v.is_finite() => format!("{v:.1}"),
            _ => "—".to_string(),
        };
        let loss = match (
            get("learning_datagrams_sent", ""),
            get("learning_datagrams_delivered", ""),
        ) {
            (Some(sent), Some(got)) if sent > 0.0 => format!(
                "{:.2} % ({} of {})",
                100.0 * (sent - got) / sent,
                sent - got,
                sent
            ),
            _ => "— (TCP)".to_string(),
        };
        s += &format!(
            " {} / {} | {loss} |\n",
            ms("learning_step_p50_ms"),
            ms("learning_step_p99_ms")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# rps-netsim: ...\n\
        policy,load,seed,quantity,class,value\n\
        lossy,0.3,1,flows,all,10\n\
        lossy,0.3,1,flows_completed,all,10\n\
        lossy,0.3,1,fct_p50_us,<100KB,150.4\n\
        lossy,0.3,1,fct_p99_us,<100KB,20000\n\
        lossy,0.3,1,fct_p50_us,>1MB,nan\n\
        lossy,0.3,1,learning_datagrams_sent,,200\n\
        lossy,0.3,1,learning_datagrams_delivered,,190\n\
        reliable,0.3,1,flows,all,10\n";

    #[test]
    fn parses_rows_and_finds_values() {
        let rows = parse(Path::new("x.csv"), SAMPLE).unwrap();
        assert_eq!(rows.len(), 8);
        let r = Results { rows };
        let runs = r.runs();
        assert_eq!(runs.len(), 2);
        assert_eq!(r.get(&runs[0], "fct_p50_us", "<100KB"), Some(150.4));
        assert!(r.get(&runs[0], "fct_p50_us", ">1MB").unwrap().is_nan());
        assert_eq!(r.get(&runs[1], "fct_p50_us", "<100KB"), None);
        let md = markdown(&r);
        assert!(
            md.contains("| 0.3 | lossy | 1 | 10 of 10 | 150 µs / 20.0 ms |"),
            "{md}"
        );
        assert!(md.contains("5.00 % (10 of 200)"), "{md}");
        assert!(md.contains("| 0.3 | reliable | 1 | — of 10 |"), "{md}");
    }

    #[test]
    fn rejects_files_that_are_not_results() {
        let e = parse(Path::new("x.csv"), "a,b\n1,2\n").unwrap_err();
        assert!(e.to_string().contains("not a netsim results file"), "{e}");
        let e = parse(Path::new("x.csv"), &format!("{HEADER}\nlossy,abc,1,q,,1\n")).unwrap_err();
        assert_eq!(e.to_string(), "x.csv, line 2: load `abc` is not a number");
        assert!(is_results_file(Path::new("r/results.CSV")));
        assert!(!is_results_file(Path::new("r/run.h5")));
    }
}
