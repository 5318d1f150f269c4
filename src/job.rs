//! Job files: runs and sweeps declared in TOML, read by `rps train --job` and `rps sweep`.
//!
//! A job file has an optional top-level `ranks` (the world size to start), a `[train]`
//! table whose keys are `rps train` flags (`drop_rate = 0.1` means `--drop-rate 0.1`;
//! `true` means a switch such as `--colocated`), and for sweeps a `[sweep]` table of
//! lists whose Cartesian product makes the runs (`ranks` may be one of them). Strings in
//! `[train]` may name sweep keys in braces (`metrics = "runs/n{ranks}-p{drop_rate}.h5"`).

use std::path::{Path, PathBuf};

use thiserror::Error;
use toml::{Table, Value};

#[derive(Debug, Error, PartialEq)]
pub enum JobError {
    #[error("job file {path}: cannot read: {why}")]
    Read { path: PathBuf, why: String },
    #[error("job file {path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// A parsed job file.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFile {
    pub path: PathBuf,
    /// World size to start (`ranks`), if given.
    pub ranks: Option<usize>,
    /// `[train]`, in file order.
    pub train: Vec<(String, Value)>,
    /// `[sweep]` axes, in file order; empty for a single run. An axis is one list, or
    /// several lists of one length that advance together (`together = { ranks = [..],
    /// servers = [..] }`).
    pub sweep: Vec<Vec<(String, Vec<Value>)>>,
    /// `name` of the sweep (defaults to the file stem), for `{name}` in templates.
    pub name: String,
}

impl JobFile {
    /// Every `[train]` value and every `[sweep]` value, with its key, in file order.
    pub fn values(&self) -> impl Iterator<Item = (&str, &Value)> {
        let train = self.train.iter().map(|(k, v)| (k.as_str(), v));
        let sweep = self
            .sweep
            .iter()
            .flatten()
            .filter(|(k, _)| k != "ranks")
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.as_str(), v)));
        train.chain(sweep)
    }
}

/// One run of a job: its world size and the `rps train` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRun {
    pub ranks: Option<usize>,
    pub args: Vec<String>,
    /// The sweep values of this run, e.g. `ranks=4 drop_rate=0.1 seed=2`.
    pub label: String,
    /// The `--metrics` path of this run, if the job names one.
    pub metrics: Option<PathBuf>,
    /// This run's sweep values, key and value as the file gives them.
    pub values: Vec<(String, Value)>,
}

fn invalid(path: &Path, why: impl Into<String>) -> JobError {
    JobError::Invalid {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// `drop_rate` → `--drop-rate`.
pub fn flag_name(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

pub(crate) fn scalar(path: &Path, key: &str, v: &Value) -> Result<String, JobError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Float(f) => Ok(f.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        other => Err(invalid(
            path,
            format!("{key} = {other}: expected a string, number or boolean"),
        )),
    }
}

impl JobFile {
    /// Reads and checks a job file.
    ///
    /// # Errors
    /// Unreadable file, invalid TOML, unknown top-level keys or tables, a `[sweep]` entry
    /// that is not a non-empty list, or a `ranks` that is not a positive integer.
    pub fn load(path: &Path) -> Result<Self, JobError> {
        let text = std::fs::read_to_string(path).map_err(|e| JobError::Read {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        Self::parse(path, &text)
    }

    /// Parses the text of a job file (`path` names it in errors).
    ///
    /// # Errors
    /// See [`JobFile::load`].
    pub fn parse(path: &Path, text: &str) -> Result<Self, JobError> {
        let table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| invalid(path, e.to_string().trim().to_string()))?;
        let mut job = JobFile {
            path: path.to_path_buf(),
            ranks: None,
            train: Vec::new(),
            sweep: Vec::new(),
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        for (key, value) in &table {
            match (key.as_str(), value) {
                ("ranks", v) => job.ranks = Some(positive(path, "ranks", v)?),
                ("name", Value::String(s)) => job.name = s.clone(),
                ("train", Value::Table(t)) => {
                    for (k, v) in t {
                        if matches!(v, Value::Array(_) | Value::Table(_)) {
                            return Err(invalid(
                                path,
                                format!("[train] {k}: lists belong in [sweep]"),
                            ));
                        }
                        job.train.push((k.clone(), v.clone()));
                    }
                }
                ("sweep", Value::Table(t)) => {
                    for (k, v) in t {
                        job.sweep.push(axis(path, k, v)?);
                    }
                }
                (other, _) => {
                    return Err(invalid(
                        path,
                        format!("unknown entry {other:?} (expected ranks, name, [train], [sweep])"),
                    ))
                }
            }
        }
        if job.train.is_empty() {
            return Err(invalid(path, "no [train] table"));
        }
        Ok(job)
    }

    /// Flag names used by the file (for checking against the CLI's).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.train.iter().map(|(k, _)| k.as_str()).chain(
            self.sweep
                .iter()
                .flatten()
                .map(|(k, _)| k.as_str())
                .filter(|k| *k != "ranks"),
        )
    }

    /// The runs of the job: one without `[sweep]`, else one per combination of the
    /// sweep values (last axis fastest).
    ///
    /// # Errors
    /// A template naming an unknown key, or several runs sharing one metrics path.
    pub fn runs(&self) -> Result<Vec<JobRun>, JobError> {
        let mut combos: Vec<Vec<(String, Value)>> = vec![Vec::new()];
        for axis in &self.sweep {
            let len = axis.first().map_or(0, |(_, v)| v.len());
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    (0..len).map(move |j| {
                        let mut c = c.clone();
                        c.extend(axis.iter().map(|(k, v)| (k.clone(), v[j].clone())));
                        c
                    })
                })
                .collect();
        }
        let mut runs = Vec::with_capacity(combos.len());
        for combo in combos {
            let mut vars: Vec<(String, String)> = vec![("name".into(), self.name.clone())];
            for (k, v) in &combo {
                vars.push((k.clone(), scalar(&self.path, k, v)?));
            }
            let fill = |s: &str| -> Result<String, JobError> {
                let mut out = s.to_string();
                for (k, v) in &vars {
                    out = out.replace(&format!("{{{k}}}"), v);
                }
                match out.find('{').zip(out.find('}')) {
                    Some((a, b)) if a < b => Err(invalid(
                        &self.path,
                        format!("{s:?}: unknown placeholder {}", &out[a..=b]),
                    )),
                    _ => Ok(out),
                }
            };
            let mut ranks = self.ranks;
            let mut args = Vec::new();
            let mut metrics = None;
            // Sweep values override [train] entries of the same key.
            let mut entries: Vec<(String, Value)> = self
                .train
                .iter()
                .filter(|(k, _)| !combo.iter().any(|(c, _)| c == k))
                .cloned()
                .collect();
            for (k, v) in &combo {
                if k == "ranks" {
                    ranks = Some(positive(&self.path, "sweep ranks", v)?);
                } else {
                    entries.push((k.clone(), v.clone()));
                }
            }
            for (k, v) in &entries {
                match v {
                    Value::Boolean(true) => args.push(flag_name(k)),
                    Value::Boolean(false) => {}
                    v => {
                        let value = fill(&scalar(&self.path, k, v)?)?;
                        if k == "metrics" {
                            metrics = Some(PathBuf::from(&value));
                        }
                        args.push(flag_name(k));
                        args.push(value);
                    }
                }
            }
            let label = combo
                .iter()
                .map(|(k, v)| format!("{k}={}", scalar(&self.path, k, v).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" ");
            runs.push(JobRun {
                ranks,
                args,
                label,
                metrics,
                values: combo,
            });
        }
        let mut seen = std::collections::HashSet::new();
        for r in &runs {
            if let Some(m) = &r.metrics {
                if !seen.insert(m.clone()) {
                    return Err(invalid(
                        &self.path,
                        format!("several runs write {}: put the sweep keys in the metrics path, e.g. \"runs/{{name}}/p{{drop_rate}}-s{{seed}}.h5\"", m.display()),
                    ));
                }
            }
        }
        Ok(runs)
    }
}

/// One `[sweep]` entry as an axis: a non-empty list, or a table of lists of one length
/// that advance together.
fn axis(path: &Path, key: &str, v: &Value) -> Result<Vec<(String, Vec<Value>)>, JobError> {
    let list = |k: &str, v: &Value| {
        match v {
        Value::Array(a) if !a.is_empty() => Ok(a.clone()),
        _ => Err(invalid(
            path,
            format!("[sweep] {k}: expected a non-empty list of values (or a table of lists that advance together)"),
        )),
    }
    };
    match v {
        Value::Table(t) if !t.is_empty() => {
            let lists = t
                .iter()
                .map(|(k, v)| Ok((k.clone(), list(&format!("{key}.{k}"), v)?)))
                .collect::<Result<Vec<_>, JobError>>()?;
            let len = lists[0].1.len();
            if let Some((k, v)) = lists.iter().find(|(_, v)| v.len() != len) {
                return Err(invalid(
                    path,
                    format!("[sweep] {key}: lists that advance together need one length, but {} has {len} values and {k} {}", lists[0].0, v.len()),
                ));
            }
            Ok(lists)
        }
        _ => Ok(vec![(key.to_string(), list(key, v)?)]),
    }
}

fn positive(path: &Path, key: &str, v: &Value) -> Result<usize, JobError> {
    match v {
        Value::Integer(i) if *i > 0 => Ok(*i as usize),
        other => Err(invalid(
            path,
            format!("{key} = {other}: expected a positive integer"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobFile, JobError> {
        JobFile::parse(Path::new("j.toml"), text)
    }

    #[test]
    fn single_run_becomes_flags() {
        let j = parse("ranks = 5\n[train]\ndataset = \"d.h5\"\nmetrics = \"m.h5\"\ndrop_rate = 0.1\ncolocated = true\nforce = false\nsteps = 20\n").unwrap();
        let runs = j.runs().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].ranks, Some(5));
        assert_eq!(
            runs[0].args,
            [
                "--dataset",
                "d.h5",
                "--metrics",
                "m.h5",
                "--drop-rate",
                "0.1",
                "--colocated",
                "--steps",
                "20"
            ]
        );
    }

    #[test]
    fn sweeps_are_cartesian_products_with_templates() {
        let j = parse(
            "name = \"s\"\n[train]\ndataset = \"d.h5\"\nmetrics = \"runs/{name}/n{ranks}-p{drop_rate}-s{seed}.h5\"\nseed = 9\n[sweep]\nranks = [2, 4]\ndrop_rate = [0.0, 0.1, 0.2]\nseed = [1, 2]\n",
        )
        .unwrap();
        let runs = j.runs().unwrap();
        assert_eq!(runs.len(), 12);
        assert_eq!(runs[0].ranks, Some(2));
        assert_eq!(
            runs[0].metrics.as_deref(),
            Some(Path::new("runs/s/n2-p0-s1.h5"))
        );
        assert_eq!(
            runs[11].metrics.as_deref(),
            Some(Path::new("runs/s/n4-p0.2-s2.h5"))
        );
        assert_eq!(runs[11].label, "ranks=4 drop_rate=0.2 seed=2");
        // The sweep's seed replaces [train]'s.
        assert_eq!(runs[11].args.iter().filter(|a| *a == "--seed").count(), 1);
        assert!(runs[11].args.windows(2).any(|w| w == ["--seed", "2"]));
    }

    #[test]
    fn mistakes_are_named() {
        assert!(
            parse("[train]\nmetrics = \"m.h5\"\n[sweep]\nseed = [1, 2]\n")
                .unwrap()
                .runs()
                .unwrap_err()
                .to_string()
                .contains("several runs write m.h5")
        );
        assert!(parse("[train]\nmetrics = \"m-{sed}.h5\"\n")
            .unwrap()
            .runs()
            .unwrap_err()
            .to_string()
            .contains("unknown placeholder {sed}"));
        assert!(parse("[train]\nseed = [1]\n")
            .unwrap_err()
            .to_string()
            .contains("lists belong in [sweep]"));
        assert!(parse("[sweep]\nseed = 1\n[train]\na = 1\n")
            .unwrap_err()
            .to_string()
            .contains("non-empty list"));
        assert!(parse("rank = 3\n[train]\na = 1\n")
            .unwrap_err()
            .to_string()
            .contains("unknown entry \"rank\""));
        assert!(parse("ranks = 0\n[train]\na = 1\n")
            .unwrap_err()
            .to_string()
            .contains("positive integer"));
        assert!(parse("[train\n")
            .unwrap_err()
            .to_string()
            .contains("job file j.toml"));
    }
}
