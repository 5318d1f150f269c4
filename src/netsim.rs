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

/// Mean, smallest and largest of the finite values, if any.
fn spread(vals: &[f64]) -> Option<(f64, f64, f64)> {
    let v: Vec<f64> = vals.iter().copied().filter(|v| v.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    Some((mean, lo, hi))
}

/// One value, or the mean over seeds with their range: `150 µs`, `150 µs (140–160)`.
fn cell(vals: &[f64], f: impl Fn(f64) -> String) -> String {
    match spread(vals) {
        None => "—".to_string(),
        Some((m, lo, hi)) if vals.len() == 1 || lo == hi => f(m),
        Some((m, lo, hi)) => format!("{} ({}–{})", f(m), f(lo), f(hi)),
    }
}

fn fmt_us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

/// The runs grouped by (load, policy), seeds together; sorted by load, then policy
/// (reliable first).
pub fn groups(results: &Results) -> Vec<(f64, String, Vec<RunKey>)> {
    let mut out: Vec<(f64, String, Vec<RunKey>)> = Vec::new();
    for r in results.runs() {
        match out
            .iter_mut()
            .find(|(l, p, _)| *l == r.load && *p == r.policy)
        {
            Some(g) => g.2.push(r),
            None => out.push((r.load, r.policy.clone(), vec![r])),
        }
    }
    let rank = |p: &str| (p != "reliable", p.to_string());
    out.sort_by(|a, b| a.0.total_cmp(&b.0).then(rank(&a.1).cmp(&rank(&b.1))));
    for g in &mut out {
        g.2.sort_by_key(|r| r.seed);
    }
    out
}

/// A Markdown table, one row per load and policy: web-flow FCT median / 99th percentile
/// per size class, learning step time, steps and loss. With several seeds each cell is
/// the mean over seeds followed by the smallest and largest seed's value.
pub fn markdown(results: &Results) -> String {
    let mut s = String::from("| load | policy | seeds | web flows completed |");
    for c in CLASSES {
        s += &format!(" FCT {c} p50 / p99 |");
    }
    s += " learning step p50 / p99 (ms) | steps per job (fewest) | learning datagrams lost | \
          lost per step p10–p90 | link rate at the end, median (Gbps) |\n|";
    s += &"---|".repeat(9 + CLASSES.len());
    s += "\n";
    for (load, policy, runs) in groups(results) {
        let vals = |q: &str, c: &str| -> Vec<f64> {
            runs.iter().filter_map(|r| results.get(r, q, c)).collect()
        };
        let total = |q: &str| -> String {
            let v = vals(q, "all");
            if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
                "—".to_string()
            } else {
                v.iter().sum::<f64>().to_string()
            }
        };
        let seeds: Vec<String> = runs.iter().map(|r| r.seed.to_string()).collect();
        s += &format!(
            "| {load} | {policy} | {} | {} of {} |",
            seeds.join(", "),
            total("flows_completed"),
            total("flows")
        );
        for c in CLASSES {
            s += &format!(
                " {} / {} |",
                cell(&vals("fct_p50_us", c), fmt_us),
                cell(&vals("fct_p99_us", c), fmt_us)
            );
        }
        let ms = |v: f64| format!("{v:.1}");
        let pct = |v: f64| format!("{:.2} %", 100.0 * v);
        // The loss of the measured steps (`learning_loss_rate`: without --warmup, every
        // step), else from the totals (files written before that column).
        let losses: Vec<f64> = runs
            .iter()
            .filter_map(|r| {
                let sent = results.get(r, "learning_datagrams_sent", "")?;
                let got = results.get(r, "learning_datagrams_delivered", "")?;
                (sent > 0.0).then(|| {
                    results
                        .get(r, "learning_loss_rate", "")
                        .unwrap_or((sent - got) / sent)
                })
            })
            .collect();
        let lost = if losses.is_empty() {
            "— (TCP)".to_string()
        } else {
            cell(&losses, pct)
        };
        let per_step = match (
            spread(&vals("learning_step_loss_p10", "")),
            spread(&vals("learning_step_loss_p90", "")),
        ) {
            (Some(lo), Some(hi)) => format!("{}–{}", pct(lo.0), pct(hi.0)),
            _ => "—".to_string(),
        };
        s += &format!(
            " {} / {} | {} | {lost} | {per_step} | {} |\n",
            cell(&vals("learning_step_p50_ms", ""), ms),
            cell(&vals("learning_step_p99_ms", ""), ms),
            cell(&vals("learning_steps_per_job_min", ""), |v| format!(
                "{v:.0}"
            )),
            cell(&vals("learning_rate_final_p50_gbps", ""), |v| format!(
                "{v:.2}"
            )),
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
        reliable,0.3,1,flows,all,10\n\
        lossy,0.6,1,learning_datagrams_sent,,200\n\
        lossy,0.6,1,learning_datagrams_delivered,,100\n\
        lossy,0.6,1,learning_loss_rate,,0.25\n";

    #[test]
    fn parses_rows_and_finds_values() {
        let rows = parse(Path::new("x.csv"), SAMPLE).unwrap();
        assert_eq!(rows.len(), 11);
        let r = Results { rows };
        let runs = r.runs();
        assert_eq!(runs.len(), 3);
        assert_eq!(r.get(&runs[0], "fct_p50_us", "<100KB"), Some(150.4));
        assert!(r.get(&runs[0], "fct_p50_us", ">1MB").unwrap().is_nan());
        assert_eq!(r.get(&runs[1], "fct_p50_us", "<100KB"), None);
        let md = markdown(&r);
        assert!(
            md.contains("| 0.3 | lossy | 1 | 10 of 10 | 150 µs / 20.0 ms |"),
            "{md}"
        );
        assert!(md.contains("| 5.00 % |"), "{md}");
        // The measured steps' loss where the simulator wrote it (here: after a warm-up).
        assert!(md.contains("| 25.00 % |"), "{md}");
        assert!(md.contains("| 0.3 | reliable | 1 | — of 10 |"), "{md}");
        // Reliable before lossy.
        assert!(
            md.find("reliable").unwrap() < md.find("lossy").unwrap(),
            "{md}"
        );
    }

    #[test]
    fn seeds_are_one_row_with_their_spread() {
        let text = format!(
            "{HEADER}\n\
             lossy,0.6,2,fct_p50_us,<100KB,200\n\
             lossy,0.6,1,fct_p50_us,<100KB,100\n\
             lossy,0.6,3,fct_p50_us,<100KB,300\n\
             reliable,0.6,1,fct_p50_us,<100KB,400\n"
        );
        let r = Results {
            rows: parse(Path::new("x.csv"), &text).unwrap(),
        };
        let md = markdown(&r);
        assert!(
            md.contains("| 0.6 | lossy | 1, 2, 3 | — of — | 200 µs (100 µs–300 µs) / — |"),
            "{md}"
        );
        assert!(
            md.contains("| 0.6 | reliable | 1 | — of — | 400 µs / — |"),
            "{md}"
        );
        assert_eq!(md.lines().count(), 4, "{md}");
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
