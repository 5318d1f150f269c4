//! The shipped sbatch scripts on a real multi-node Slurm: one slurmctld and four slurmd,
//! each node a host of the namespace testbed with its own address and host name
//! (tests/slurm/multinode.sh). Ranks on three nodes under mpirun and `srun --mpi=pmix`,
//! a sweep as a job array over nodes, the time-limit signal on every node, a requeue
//! that resumes on other nodes bit for bit, a node killed mid-run, and the testbed's
//! real packet loss seen over UDP. Skipped, saying why, where namespaces or the daemons
//! cannot start (not root, no namespaces, Slurm not installed).

mod common;
use common::*;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// The testbed's name and network: not the default one (rpstb, 10.99.0).
const NAME: &str = "rpsslurm";
const NET: &str = "10.98.0";
const NODES: usize = 4;

/// A running multi-node cluster, stopped on drop (and before every start, so a failed
/// run's leftovers never outlive the next one).
struct Cluster {
    dir: PathBuf,
}

fn script() -> String {
    format!("{REPO}/tests/slurm/multinode.sh")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Cluster {
    /// Starts the cluster, or says why it cannot run here and returns `None`.
    fn start() -> Option<Cluster> {
        let tmp = env!("CARGO_TARGET_TMPDIR");
        if tmp.starts_with("/tmp/") {
            eprintln!("skipped: the cluster's files must not be under /tmp, which every node replaces by its own (CARGO_TARGET_TMPDIR is {tmp})");
            return None;
        }
        let dir = Path::new(tmp).join("slurm-multinode");
        let out = Command::new(script())
            .args(["start", dir.to_str().unwrap(), &NODES.to_string()])
            .env("TESTBED_NAME", NAME)
            .env("TESTBED_NET", NET)
            // A requeued job may start again after this many seconds (Slurm: 120).
            .env("MULTINODE_CRED_EXPIRE", "5")
            .output()
            .expect("cannot run tests/slurm/multinode.sh");
        match out.status.code() {
            Some(0) => Some(Cluster { dir }),
            Some(77) => {
                eprintln!("skipped: {}", String::from_utf8_lossy(&out.stderr).trim());
                None
            }
            _ => panic!("the multi-node cluster did not start:\n{}", text(&out)),
        }
    }

    /// `program` on the login node, with what a job needs in its environment (sbatch
    /// passes the submitter's environment on to the job).
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(script());
        c.args(["exec", self.dir.to_str().unwrap(), program])
            .env("TESTBED_NAME", NAME)
            .env("TESTBED_NET", NET)
            .open_mpi_env()
            .env("RPS_BIN", RPS);
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Submits a batch script from `cwd` with `env`; returns the job id.
    fn sbatch(&self, cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
        let out = self
            .command("sbatch")
            .envs(env.iter().copied())
            .current_dir(cwd)
            .arg("--parsable")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sbatch {args:?} failed: {}",
            text(&out)
        );
        let id = String::from_utf8_lossy(&out.stdout);
        id.trim().split(';').next().unwrap().to_string()
    }

    /// Waits until no job of `id` (array elements included) is queued or running.
    fn wait(&self, id: &str, limit: Duration) {
        let start = Instant::now();
        while !self.run("squeue", &["-h", "-j", id]).trim().is_empty() {
            assert!(
                start.elapsed() < limit,
                "job {id} did not finish in {limit:?}: {}",
                self.job(id)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `scontrol show job` of a job, one line.
    fn job(&self, id: &str) -> String {
        let out = self
            .command("scontrol")
            .args(["-o", "show", "job", id])
            .output()
            .unwrap();
        text(&out)
    }

    /// One field of `scontrol show job` (`NodeList`, `JobState`, ...).
    fn field(&self, id: &str, name: &str) -> String {
        let job = self.job(id);
        let key = format!("{name}=");
        job.split_whitespace()
            .find_map(|f| f.strip_prefix(key.as_str()))
            .unwrap_or_else(|| panic!("no {name} in {job}"))
            .to_string()
    }

    /// The nodes of a Slurm host list (`rpsslurm-h[1-2]`), expanded.
    fn hostnames(&self, list: &str) -> Vec<String> {
        self.run("scontrol", &["show", "hostnames", list])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `scontrol update nodename=NODES state=STATE` (drain, down, resume).
    fn set_nodes(&self, nodes: &str, state: &str) {
        let (nodes, state_arg) = (format!("nodename={nodes}"), format!("state={state}"));
        let mut args = vec!["update", nodes.as_str(), state_arg.as_str()];
        if state != "resume" {
            args.push("reason=rps-test");
        }
        self.run("scontrol", &args);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["stop", self.dir.to_str().unwrap()])
            .env("TESTBED_NAME", NAME)
            .env("TESTBED_NET", NET)
            .status();
    }
}

fn train_sbatch() -> String {
    format!("{REPO}/slurm/train.sbatch")
}

/// The distinct host names of a metrics file's `hosts` attribute, in rank order.
fn hosts(m: &Path) -> Vec<String> {
    attr_str(m, "hosts")
        .split(',')
        .map(str::to_string)
        .collect()
}

fn distinct(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

/// Waits for `path` to exist, naming the job if it never does.
fn wait_for(path: &Path, limit: Duration, cluster: &Cluster, id: &str) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < limit,
            "{} never appeared: {}",
            path.display(),
            cluster.job(id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The newest complete checkpoint in `dir` and the rank files it holds.
fn newest_checkpoint(dir: &Path) -> (String, BTreeSet<String>) {
    let mut complete: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("COMPLETE").is_file())
        .collect();
    complete.sort();
    let newest = complete
        .last()
        .unwrap_or_else(|| panic!("no complete checkpoint in {}", dir.display()));
    let files = std::fs::read_dir(newest)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("rank-"))
        .collect();
    (
        newest.file_name().unwrap().to_string_lossy().into_owned(),
        files,
    )
}

fn rank_files(n: usize) -> BTreeSet<String> {
    (0..n).map(|r| format!("rank-{r:05}.h5")).collect()
}

fn log(dir: &Path, id: &str) -> String {
    std::fs::read_to_string(dir.join(format!("rps-{id}.out"))).unwrap_or_default()
}

#[test]
fn training_and_a_sweep_span_the_nodes_under_mpirun_and_srun() {
    let _machine = lock_mpirun();
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    let d = dir.path();

    // The command, with the launch the script uses by default (mpirun inside
    // the allocation) and with srun --mpi=pmix.
    for launch in ["mpirun", "srun"] {
        let id = cluster.sbatch(
            d,
            &[("RPS_LAUNCH", launch)],
            &[
                "--nodes=3",
                "--ntasks-per-node=2",
                &train_sbatch(),
                "--dataset",
                data,
                "--model",
                "mlp",
                "--steps",
                "6",
                "--eval-every",
                "3",
                "--batch-size",
                "8",
                "--colocated",
            ],
        );
        cluster.wait(&id, Duration::from_secs(120));
        assert!(
            cluster.job(&id).contains("JobState=COMPLETED"),
            "{launch}: {}\n{}",
            cluster.job(&id),
            log(d, &id)
        );
        let m = d.join(format!("runs/slurm-{id}/metrics.h5"));
        assert_eq!(attr_str(&m, "status"), "completed");
        assert_eq!(attr_i64(&m, "world_size"), 6);
        let h = hosts(&m);
        let nodes = cluster.hostnames(&cluster.field(&id, "NodeList"));
        assert_eq!(nodes.len(), 3, "{launch}: {nodes:?}");
        // Two ranks on each of the three nodes Slurm allocated, named by their nodes.
        assert_eq!(distinct(&h), distinct(&nodes), "{launch}: {h:?}");
        for n in &nodes {
            assert_eq!(h.iter().filter(|x| *x == n).count(), 2, "{launch}: {h:?}");
        }
    }

    // A sweep as a job array: each element's run spans two nodes of its own.
    let job = d.join("tiny.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"tiny\"\nranks = 4\n[train]\ndataset = \"{data}\"\nmetrics = \"{}/tiny-p{{drop_rate}}.h5\"\nmodel = \"mlp\"\ncolocated = true\nsteps = 3\nbatch_size = 8\n[sweep]\ndrop_rate = [0.0, 0.3]\n",
            d.display()
        ),
    )
    .unwrap();
    let id = cluster.sbatch(
        d,
        &[],
        &[
            "--array=0-1",
            "--nodes=2",
            "--ntasks-per-node=2",
            &format!("{REPO}/slurm/sweep.sbatch"),
            job.to_str().unwrap(),
        ],
    );
    cluster.wait(&id, Duration::from_secs(120));
    let mut all = BTreeSet::new();
    for (i, p) in ["0", "0.3"].iter().enumerate() {
        let m = d.join(format!("tiny-p{p}.h5"));
        assert_eq!(attr_str(&m, "status"), "completed", "{}", m.display());
        assert_eq!(attr_f64(&m, "drop_rate"), p.parse::<f64>().unwrap());
        let element = format!("{id}_{i}");
        let nodes = cluster.hostnames(&cluster.field(&element, "NodeList"));
        let h = distinct(&hosts(&m));
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h, distinct(&nodes), "element {element}");
        all.extend(h);
    }
    eprintln!("the sweep's two runs ran on {all:?}");
}

/// `rps train` arguments of the resumable run: four ranks, dedicated server, drops.
fn resumable(data: &str, model: &str, metrics: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = [
        "--dataset",
        data,
        "--model",
        "mlp",
        "--steps",
        "60",
        "--eval-every",
        "10",
        "--batch-size",
        "8",
        "--servers",
        "1",
        "--drop-rate",
        "0.2",
        "--seed",
        "4",
        "--save-model",
        model,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(m) = metrics {
        a.extend(["--metrics".to_string(), m.to_string()]);
    }
    a
}

#[test]
fn a_stopped_job_and_a_dead_node_resume_elsewhere_bit_for_bit() {
    let _machine = lock_mpirun();
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let every = [("RPS_CHECKPOINT_EVERY", "10")];
    let two_nodes = ["--nodes=2", "--ntasks-per-node=2"];
    let submit = |extra: &[&str], args: Vec<String>| {
        let mut a: Vec<&str> = two_nodes.to_vec();
        a.extend_from_slice(extra);
        let script = train_sbatch();
        a.push(&script);
        a.extend(args.iter().map(String::as_str));
        cluster.sbatch(d, &every, &a)
    };

    // The uninterrupted run, and beside it (on the other two nodes) the one to stop.
    let (reference, reference_model) = (p("reference.h5"), p("reference-model.h5"));
    let ref_id = submit(&[], resumable(data, &reference_model, Some(&reference)));
    let stopped_model = p("stopped-model.h5");
    let id = submit(&["--requeue"], resumable(data, &stopped_model, None));
    let out = d.join(format!("runs/slurm-{id}"));
    wait_for(
        &out.join("checkpoints/step-00000010/COMPLETE"),
        Duration::from_secs(60),
        &cluster,
        &id,
    );
    // The nodes it runs on are drained (it keeps them until it ends, nothing new comes),
    // then the time-limit warning: the requeued job must resume on other nodes.
    let first = cluster.field(&id, "NodeList");
    cluster.set_nodes(&first, "drain");
    cluster.run("scancel", &["--batch", "--signal=TERM", &id]);
    cluster.wait(&id, Duration::from_secs(150));
    cluster.wait(&ref_id, Duration::from_secs(60));
    let info = cluster.job(&id);
    assert!(
        info.contains("JobState=COMPLETED"),
        "{info}\n{}",
        log(d, &id)
    );
    assert!(info.contains("Restarts=1"), "{info}");
    let second = cluster.field(&id, "NodeList");
    cluster.set_nodes(&first, "resume");
    let (first, second) = (cluster.hostnames(&first), cluster.hostnames(&second));
    assert!(
        distinct(&first).is_disjoint(&distinct(&second)),
        "the requeued job ran on {second:?} again, the first run on {first:?}"
    );
    let joblog = log(d, &id);
    for line in [
        "rps: time limit near, asking the ranks to stop",
        "stopped by a signal after step",
        "rps: checkpoint written, requeueing job",
        "rps: resuming from",
    ] {
        assert!(joblog.contains(line), "no '{line}' in the log:\n{joblog}");
    }
    let m = out.join("metrics.h5");
    assert_eq!(attr_str(&m, "status"), "completed");
    // The metrics file names where the resumed run ran.
    assert_eq!(distinct(&hosts(&m)), distinct(&second));
    let reference = PathBuf::from(reference);
    let reference_model = PathBuf::from(reference_model);
    assert_same_run(&reference, &reference_model, &m, Path::new(&stopped_model));

    // A node dies mid-run (its slurmd, the job's daemon and ranks, all at once).
    let dead_model = p("dead-model.h5");
    let id = submit(&["--requeue"], resumable(data, &dead_model, None));
    let out = d.join(format!("runs/slurm-{id}"));
    wait_for(
        &out.join("checkpoints/step-00000010/COMPLETE"),
        Duration::from_secs(60),
        &cluster,
        &id,
    );
    let nodes = cluster.hostnames(&cluster.field(&id, "NodeList"));
    // Not the first node, which runs the batch script and mpirun.
    let victim = nodes[1].clone();
    let number = victim.trim_start_matches(&format!("{NAME}-h"));
    let killed = Instant::now();
    let out_kill = Command::new(script())
        .args(["kill-node", cluster.dir.to_str().unwrap(), number])
        .env("TESTBED_NAME", NAME)
        .output()
        .unwrap();
    assert!(out_kill.status.success(), "{}", text(&out_kill));
    while cluster.field(&id, "JobState") == "RUNNING" {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the job still runs 30 s after its node {victim} died"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ended = killed.elapsed();
    // Slurm marks the dead node down by itself after SlurmdTimeout; the operator does it
    // at once, so the job's cleanup on it ends and it can be requeued.
    cluster.set_nodes(&victim, "down");
    cluster.wait(&id, Duration::from_secs(30));
    let info = cluster.job(&id);
    assert!(info.contains("JobState=FAILED"), "{info}");
    let joblog = log(d, &id);
    // The job names the lost node, and its own first lines the ranks that were on it.
    // OpenMPI names it in one of two reports, whichever comes first: its daemon's loss
    // ("Remote daemon ... on node X"), or a rank's TCP peer hanging up ("Peer host: X").
    let daemon = joblog.contains("Remote daemon") && joblog.contains(&format!("on node {victim}"));
    let peer = joblog.lines().any(|l| {
        l.trim_start().starts_with("Peer host:") && l.trim_end().ends_with(victim.as_str())
    });
    assert!(
        daemon || peer,
        "the log does not name node {victim}:\n{joblog}"
    );
    assert!(
        joblog.contains(&format!("{victim} 2-3")),
        "no ranks of {victim} in the log:\n{joblog}"
    );
    let m = out.join("metrics.h5");
    assert_eq!(attr_str(&m, "status"), "running");
    let evals = read_u64(&m, "eval/step");
    assert!(!evals.is_empty(), "{evals:?}");
    let (last, files) = newest_checkpoint(&out.join("checkpoints"));
    assert_eq!(files, rank_files(4), "{last}");
    let last_step: u64 = last.trim_start_matches("step-").parse().unwrap();

    cluster.run("scontrol", &["requeue", &id]);
    cluster.wait(&id, Duration::from_secs(120));
    let info = cluster.job(&id);
    assert!(
        info.contains("JobState=COMPLETED"),
        "{info}\n{}",
        log(d, &id)
    );
    let after = cluster.hostnames(&cluster.field(&id, "NodeList"));
    assert!(!after.contains(&victim), "{after:?}");
    assert_eq!(
        attr_str(&m, "resumed_at_step"),
        last_step.to_string(),
        "the requeued job did not resume from the last checkpoint"
    );
    assert_same_run(&reference, &reference_model, &m, Path::new(&dead_model));
    eprintln!("the job ended {ended:?} after its node died");
}

#[test]
fn a_real_time_limit_stops_the_ranks_on_every_node() {
    let _machine = lock_mpirun();
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    let d = dir.path();
    // One minute, the warning 45 s before it: Slurm sends it 15 s in, up to ~30 s late.
    let start = Instant::now();
    let id = cluster.sbatch(
        d,
        &[("RPS_CHECKPOINT_EVERY", "1000000")],
        &[
            "--nodes=3",
            "--ntasks-per-node=2",
            "--time=1",
            "--signal=B:TERM@45",
            "--no-requeue",
            &train_sbatch(),
            "--dataset",
            data,
            "--model",
            "mlp",
            "--steps",
            "10000000",
            "--eval-every",
            "50",
            "--batch-size",
            "8",
            "--colocated",
        ],
    );
    cluster.wait(&id, Duration::from_secs(120));
    let info = cluster.job(&id);
    assert!(info.contains("ExitCode=75:0"), "{info}\n{}", log(d, &id));
    assert!(!info.contains("JobState=TIMEOUT"), "{info}");
    let out = d.join(format!("runs/slurm-{id}"));
    let m = out.join("metrics.h5");
    assert_eq!(attr_str(&m, "status"), "interrupted");
    assert_eq!(distinct(&hosts(&m)).len(), 3);
    // The stop's checkpoint (the only one: no periodic checkpoint is due) holds the file
    // of every rank, on every node: each rank stopped cleanly.
    let (_, files) = newest_checkpoint(&out.join("checkpoints"));
    assert_eq!(files, rank_files(6));
    let joblog = log(d, &id);
    assert!(joblog.contains("rps: time limit near"), "{joblog}");
    assert!(joblog.contains("rps: not requeueing job"), "{joblog}");
    eprintln!("stopped at the time limit in {:?}", start.elapsed());
}

#[test]
fn a_job_over_udp_sees_the_bridges_real_loss() {
    let _machine = lock_mpirun();
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let loss = Command::new(format!("{REPO}/testbed/testbed.sh"))
        .args(["loss", "0.05"])
        .env("TESTBED_NAME", NAME)
        .output()
        .unwrap();
    assert!(loss.status.success(), "{}", text(&loss));
    let data = small_dataset();
    let data = data.to_str().unwrap();
    let dir = out_dir();
    let d = dir.path();
    let subnet = format!("{NET}.0/24");
    // One rank per node: every datagram crosses the bridge.
    let id = cluster.sbatch(
        d,
        &[],
        &[
            "--nodes=3",
            "--ntasks-per-node=1",
            &train_sbatch(),
            "--dataset",
            data,
            "--model",
            "mlp",
            "--colocated",
            "--steps",
            "30",
            "--batch-size",
            "8",
            "--eval-every",
            "15",
            "--transport",
            "udp",
            "--detect",
            "deadline",
            // Generous, so that what the job misses is what the bridge lost, not what a
            // busy 2-core machine delivered late.
            "--recv-timeout-ms",
            "1000",
            "--udp-subnet",
            &subnet,
        ],
    );
    cluster.wait(&id, Duration::from_secs(150));
    let counters = Command::new(format!("{REPO}/testbed/testbed.sh"))
        .arg("counters")
        .env("TESTBED_NAME", NAME)
        .output()
        .unwrap();
    let info = cluster.job(&id);
    assert!(
        info.contains("JobState=COMPLETED"),
        "{info}\n{}",
        log(d, &id)
    );
    let m = d.join(format!("runs/slurm-{id}/metrics.h5"));
    assert_eq!(attr_str(&m, "status"), "completed");
    assert_eq!(distinct(&hosts(&m)).len(), 3);
    let sum = |n: &str| read_u64(&m, n).iter().sum::<u64>();
    let sent = sum("comm/packets_up") - sum("comm/packets_dropped_up") + sum("comm/packets_down")
        - sum("comm/packets_dropped_down");
    let missed = sum("comm/packets_missed_up") + sum("comm/packets_missed_down");
    let rate = missed as f64 / sent as f64;
    eprintln!(
        "the job saw {missed} of {sent} packets lost ({rate:.4}); the bridge: {}",
        String::from_utf8_lossy(&counters.stdout).trim()
    );
    // About 17,000 datagrams: the binomial spread around 5 % is about 0.2 %.
    assert!(
        (0.04..0.07).contains(&rate),
        "the job saw {missed} of {sent} packets lost ({rate:.4}); the bridge dropped 5 % ({})",
        String::from_utf8_lossy(&counters.stdout).trim()
    );
    assert_eq!(sum("comm/rejected"), 0);
}
