//! The training driver, generic over [`Transport`]: it runs the same way under MPI, over
//! UDP and on N in-process ranks ([`threads`]). Split by role: `setup.rs` prepares and
//! validates, `run.rs` is the step loop, `record.rs` the metrics and evaluations,
//! `outputs.rs` the files. Invariant: every rank executes the same sequence of
//! collectives (exchanges, evaluations, metric reductions) in the same order, whatever
//! its role, so no rank ever waits for a peer that took another branch.

mod diag;
mod drops;
mod outcome;
mod outputs;
mod paths;
mod record;
mod run;
mod setup;
mod stops;
pub mod threads;
mod watchdog;

use std::sync::atomic::AtomicBool;

use crate::comm::{agree, gather_strings, Disagreement, Transport};
use crate::config::TrainConfig;
use crate::metrics::RunEnv;

pub use outcome::{Failure, Summary};
pub use setup::build_exchange;

/// Runs training on every rank of `t`.
///
/// # Errors
/// [`Failure::Agreed`] for anything detected before training starts (bad dataset,
/// unwritable output, impossible roles) or by all ranks together; [`Failure::Local`] for
/// a failure on this rank during training; [`Failure::Interrupted`] after a stop.
///
/// `stop` is raised (by a signal handler) to ask for a clean stop; all ranks then stop
/// at the same step boundary.
pub fn train<T: Transport + ?Sized>(
    t: &T,
    cfg: &TrainConfig,
    stop: &AtomicBool,
) -> Result<Summary, Failure> {
    agree(t, same_job(t, cfg))?;
    let (mut setup, exchange) = agree(
        t,
        setup::prepare(t.rank(), t.size(), t.ranks_on_host(), cfg),
    )?;
    choose_resume_step(t, &mut setup)?;
    let env = RunEnv {
        command_line: cfg.command_line.clone(),
        mpi_library_version: t.library_version(),
        hosts: gather_hosts(t),
        started_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    };
    if t.rank() == 0 && env.hosts.iter().any(|h| *h != env.hosts[0]) {
        // So that a log which says a node was lost also says which ranks were on it.
        log::info!("ranks by host: {}", ranks_by_host(&env.hosts));
    }
    let outputs = match t.rank() {
        0 => outputs::open(cfg, &setup, &env).map(Some),
        _ => Ok(None),
    };
    let outputs = agree(t, outputs)?;
    run::Run::new(t, cfg, setup, exchange, outputs, stop)?.steps()
}

/// The output paths of a run, checked before any rank starts: no output is also an
/// input (the dataset, the job file, ...) or another output, and on the rank that writes
/// them (`writer`: rank 0) --metrics and --save-model can be created. Call it on every
/// rank and let them agree, so that all stop with one message (exit status 2, as for a
/// bad flag).
///
/// # Errors
/// The first bad path, named by its flag.
pub fn check_outputs(cfg: &TrainConfig, writer: bool) -> anyhow::Result<()> {
    paths::check_paths(cfg)?;
    if writer {
        paths::check_writable(cfg)?;
    }
    Ok(())
}

/// What every rank of a job must share: the whole configuration (but the command line
/// and the job file's path, which may differ in form while giving the same flags) and the
/// build of rps, as `(field, value)` pairs taken from the configuration's `Debug` form,
/// so a new field is covered without being listed.
fn job_identity(cfg: &TrainConfig) -> Vec<(String, String)> {
    let mut c = cfg.clone();
    c.command_line.clear();
    c.job = None;
    let text = format!("{c:?}");
    let body = text
        .split_once(" { ")
        .and_then(|(_, rest)| rest.strip_suffix(" }"))
        .unwrap_or(&text);
    let mut fields = top_level_fields(body);
    fields.push(("build".into(), crate::build_id::identity().into()));
    fields
}

/// Splits `a: X, b: Y { c: 1, d: "e, f" }` at its top-level commas into name/value pairs.
fn top_level_fields(body: &str) -> Vec<(String, String)> {
    let (mut out, mut depth, mut quoted, mut escaped, mut start) =
        (Vec::new(), 0i32, false, false, 0);
    let mut push = |part: &str| {
        let (k, v) = part.split_once(": ").unwrap_or((part, ""));
        out.push((k.trim().to_string(), v.trim().to_string()));
    };
    for (i, ch) in body.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '{' | '(' | '[' if !quoted => depth += 1,
            '}' | ')' | ']' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    push(&body[start..]);
    out
}

/// Checks that every rank runs the same job: a rank started with other flags (an MPMD
/// launch, per-node job files) or another build of rps would otherwise hang the job or
/// train on mixed settings. Collective.
///
/// # Errors
/// The first field that differs, with the ranks on each side.
pub(crate) fn same_job<T: Transport + ?Sized>(t: &T, cfg: &TrainConfig) -> anyhow::Result<()> {
    let mine = job_identity(cfg);
    let text: String = mine
        .iter()
        .map(|(k, v)| format!("{k}\u{1f}{v}\u{1e}"))
        .collect();
    let hashes = t.allgather_bytes(&crate::hash::hash_bytes(text.as_bytes()).to_le_bytes());
    if hashes.chunks(8).all(|h| h == &hashes[..8]) {
        return Ok(());
    }
    let parsed: Vec<Vec<(String, String)>> = gather_strings(t, &text)
        .iter()
        .map(|s| {
            s.split('\u{1e}')
                .filter(|f| !f.is_empty())
                .map(|f| {
                    let (k, v) = f.split_once('\u{1f}').unwrap_or((f, ""));
                    (k.to_string(), v.to_string())
                })
                .collect()
        })
        .collect();
    let first_diff = parsed[0]
        .iter()
        .enumerate()
        .find(|(i, (_, v))| parsed.iter().any(|p| p.get(*i).map(|f| &f.1) != Some(v)));
    let Some((i, (name, _))) = first_diff else {
        anyhow::bail!("the ranks run different jobs (their configurations differ)");
    };
    let values = parsed
        .iter()
        .map(|p| p.get(i).map(|f| f.1.clone()).unwrap_or_default());
    let sides = crate::comm::ranks_by_value(values, String::clone);
    anyhow::bail!(
        "the ranks run different jobs: {name} is {} (start every rank with the same flags and the same rps binary)",
        sides.join(", but ")
    )
}

/// The all-reduce baseline's average: `average` becomes the mean of the worker replicas
/// (`params`; a pure server passes an empty slice and adds zeros), summed in rank order
/// by the transport, then scaled by 1/`workers`. Collective.
pub fn average_workers<T: Transport + ?Sized>(
    t: &T,
    params: &[f32],
    average: &mut [f32],
    workers: usize,
) {
    if params.is_empty() {
        average.fill(0.0);
    } else {
        average.copy_from_slice(params);
    }
    t.allreduce_sum_f32(average);
    let scale = 1.0 / workers as f32;
    average.iter_mut().for_each(|x| *x *= scale);
}

/// With --resume: the newest checkpoint step every rank can use (a rank whose newest
/// file is unreadable or corrupt makes the job fall back to an older one, with a
/// warning); keeps only that state in `setup`. Collective.
fn choose_resume_step<T: Transport + ?Sized>(
    t: &T,
    setup: &mut setup::Setup,
) -> Result<(), Disagreement> {
    let r = &mut setup.resume;
    let mine: Vec<String> = r.candidates.iter().map(|c| c.step.to_string()).collect();
    let all = gather_strings(t, &mine.join(","));
    if all.iter().all(|s| s.is_empty()) && r.unusable.is_empty() {
        return Ok(()); // not resuming
    }
    let usable = |s: &str| -> Vec<u64> { s.split(',').filter_map(|x| x.parse().ok()).collect() };
    let common = usable(&all[0])
        .into_iter()
        .filter(|step| all.iter().all(|s| usable(s).contains(step)))
        .max();
    let newest = all
        .iter()
        .flat_map(|s| usable(s))
        .chain(r.unusable.iter().map(|u| u.0))
        .max();
    for (step, why) in &r.unusable {
        log::warn!(
            "rank {}: cannot resume from the checkpoint of step {step}: {why}",
            t.rank()
        );
    }
    let chosen = match common {
        Some(step) => {
            r.candidates.retain(|c| c.step == step);
            Ok(step)
        }
        None => Err(anyhow::anyhow!(
            "--resume: no checkpoint that every rank can read (usable steps per rank: {})",
            all.iter()
                .enumerate()
                .map(|(i, s)| format!("rank {i}: [{s}]"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    };
    let step = agree(t, chosen)?;
    if t.rank() == 0 && newest.is_some_and(|n| n > step) {
        log::warn!("resuming from the checkpoint of step {step}, the newest every rank can read");
    }
    Ok(())
}

/// The host name of every rank, in rank order. Collective.
fn gather_hosts<T: Transport + ?Sized>(t: &T) -> Vec<String> {
    gather_strings(t, &t.processor_name())
}

/// `h1 0-1, h2 2,4, h3 3`: each host (in order of its first rank) with its ranks, runs
/// of consecutive ranks written as ranges.
fn ranks_by_host(hosts: &[String]) -> String {
    let mut order: Vec<(&str, Vec<usize>)> = Vec::new();
    for (rank, h) in hosts.iter().enumerate() {
        match order.iter_mut().find(|(name, _)| name == h) {
            Some((_, ranks)) => ranks.push(rank),
            None => order.push((h, vec![rank])),
        }
    }
    let runs = |ranks: &[usize]| {
        let mut parts: Vec<String> = Vec::new();
        let mut i = 0;
        while i < ranks.len() {
            let mut j = i;
            while j + 1 < ranks.len() && ranks[j + 1] == ranks[j] + 1 {
                j += 1;
            }
            parts.push(match j - i {
                0 => ranks[i].to_string(),
                _ => format!("{}-{}", ranks[i], ranks[j]),
            });
            i = j + 1;
        }
        parts.join(",")
    };
    order
        .iter()
        .map(|(h, ranks)| format!("{h} {}", runs(ranks)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_listed_by_host_with_ranges() {
        let hosts: Vec<String> = ["a", "a", "b", "a", "b", "c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(ranks_by_host(&hosts), "a 0-1,3, b 2,4, c 5");
        assert_eq!(ranks_by_host(&hosts[..2]), "a 0-1");
    }

    #[test]
    fn fields_split_at_top_level_only() {
        let f = top_level_fields(
            r#"a: Steps(5), b: Some("x, \"y\""), c: Udp(UdpOptions { mtu: 1500, port: None }), d: [1, 2]"#,
        );
        let names: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert_eq!(f[0].1, "Steps(5)");
        assert_eq!(f[1].1, r#"Some("x, \"y\"")"#);
        assert_eq!(f[2].1, "Udp(UdpOptions { mtu: 1500, port: None })");
    }

    #[test]
    fn ranks_that_run_different_jobs_are_named() {
        let flags = |extra: &[&str]| {
            let base = "--dataset d.h5 --metrics m.h5 --colocated".split(' ');
            let f = crate::cli::parse_train(base.chain(extra.iter().copied())).unwrap();
            crate::cli::validate::train_config(&f, 3, String::new()).unwrap()
        };
        let cfgs = [
            flags(&["--steps", "5"]),
            flags(&["--steps", "7"]),
            flags(&["--steps", "5"]),
        ];
        let errs: Vec<String> = std::thread::scope(|s| {
            let nets = crate::comm::local::LocalTransport::network(3);
            let handles: Vec<_> = nets
                .into_iter()
                .zip(&cfgs)
                .map(|(net, cfg)| s.spawn(move || agree(&net, same_job(&net, cfg))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap_err().message)
                .collect()
        });
        for e in &errs {
            assert!(
                e.contains("duration is Steps(5) on rank(s) 0, 2, but Steps(7) on rank(s) 1"),
                "{e}"
            );
        }
        // The same flags in another order (another command line) are the same job.
        let cfg = flags(&["--steps", "5"]);
        let mut other = cfg.clone();
        other.command_line = "rps train --steps 5 --colocated ...".into();
        other.job = Some("node-2/job.toml".into());
        assert_eq!(job_identity(&cfg), job_identity(&other));
    }
}
