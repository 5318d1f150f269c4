//! Job files and sweeps: `rps train --job` (flags override the file) and `rps sweep`.

mod common;
use common::*;

use std::path::Path;

fn write_job(dir: &Path, name: &str, body: &str) -> String {
    let data = small_dataset();
    let path = dir.join(name);
    let text = body
        .replace("DATA", data.to_str().unwrap())
        .replace("OUT", dir.to_str().unwrap());
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn train_takes_a_job_file_and_flags_override_it() {
    let dir = out_dir();
    let job = write_job(
        dir.path(),
        "one.toml",
        "ranks = 3\n[train]\ndataset = \"DATA\"\nmetrics = \"OUT/one.h5\"\ncolocated = true\ndrop_rate = 0.2\nsteps = 3\nbatch_size = 8\n",
    );
    let run = mpirun(
        3,
        &["train", "--job", &job, "--drop-rate", "0", "--seed", "5"],
    );
    run.assert_ok();
    let m = dir.path().join("one.h5");
    assert_eq!(attr_f64(&m, "drop_rate"), 0.0);
    assert_eq!(attr_i64(&m, "seed"), 5);
    assert_eq!(attr_i64(&m, "steps"), 3);
    assert_eq!(attr_str(&m, "mode"), "colocated");

    let run = mpirun(2, &["train", "--job", &job]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("the job asks for 3 ranks"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr
            .lines()
            .filter(|l| l.starts_with("error"))
            .count(),
        1,
        "{}",
        run.stderr
    );

    let bad = write_job(
        dir.path(),
        "bad.toml",
        "[train]\ndataset = \"DATA\"\nmetrics = \"OUT/b.h5\"\ndrop_rat = 0.1\n",
    );
    let run = mpirun(3, &["train", "--job", &bad]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr
            .contains("\"drop_rat\" is not a flag of `rps train`"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr
            .lines()
            .filter(|l| l.starts_with("error"))
            .count(),
        1,
        "{}",
        run.stderr
    );
}

#[test]
fn sweeps_run_every_combination_once() {
    let dir = out_dir();
    let job = write_job(
        dir.path(),
        "sweep.toml",
        "name = \"tiny\"\nranks = 3\n[train]\ndataset = \"DATA\"\nmetrics = \"OUT/{name}-p{drop_rate}-s{seed}.h5\"\ncolocated = true\nsteps = 2\nbatch_size = 8\n[sweep]\ndrop_rate = [0.0, 0.5]\nseed = [1, 2]\n",
    );
    let listed = rps(&["sweep", &job, "--list"]);
    listed.assert_ok();
    assert_eq!(listed.stdout.lines().count(), 4);
    assert!(
        listed.stdout.contains("tiny-p0.5-s2.h5"),
        "{}",
        listed.stdout
    );

    let _guard = lock_mpirun();
    let first = rps(&["sweep", &job]);
    first.assert_ok();
    for name in [
        "tiny-p0-s1.h5",
        "tiny-p0-s2.h5",
        "tiny-p0.5-s1.h5",
        "tiny-p0.5-s2.h5",
    ] {
        let m = dir.path().join(name);
        assert_eq!(attr_str(&m, "status"), "completed", "{name}");
    }
    assert_eq!(
        attr_f64(&dir.path().join("tiny-p0.5-s2.h5"), "drop_rate"),
        0.5
    );
    assert_eq!(attr_i64(&dir.path().join("tiny-p0.5-s2.h5"), "seed"), 2);
    // A second pass has nothing left to do.
    let again = rps(&["sweep", &job]);
    again.assert_ok();
    assert_eq!(
        again.stderr.matches("completed already, skipped").count(),
        4,
        "{}",
        again.stderr
    );
    // One element of a job array.
    let one = rps(&["sweep", &job, "--index", "3", "--rerun"]);
    one.assert_ok();
    assert!(
        one.stderr.contains("run 3/4 (drop_rate=0.5 seed=2)"),
        "{}",
        one.stderr
    );
    let out_of_range = rps(&["sweep", &job, "--index", "4"]);
    assert_eq!(out_of_range.code, Some(1));
    assert!(
        out_of_range.stderr.contains("--index 4"),
        "{}",
        out_of_range.stderr
    );
}

/// A job-file value of the wrong type names the file and the key, and a sweep with one
/// bad value is refused before any run starts.
#[test]
fn bad_job_values_name_the_file_and_key() {
    let dir = out_dir();
    for (name, line, needle) in [
        (
            "switch.toml",
            "colocated = \"yes\"",
            "colocated = \"yes\": a switch takes true or false",
        ),
        (
            "negative.toml",
            "steps = -3",
            "steps = -3: invalid value '-3' for '--steps <N>'",
        ),
        (
            "valued.toml",
            "seed = true",
            "seed = true: --seed takes a value, not true or false",
        ),
    ] {
        let job = write_job(
            dir.path(),
            name,
            &format!("[train]\ndataset = \"DATA\"\nmetrics = \"OUT/x.h5\"\n{line}\n"),
        );
        let run = rps(&["train", "--job", &job, "--local-ranks", "2"]);
        assert_eq!(run.code, Some(2), "{}", run.stderr);
        assert!(
            run.stderr.contains(&format!("job file {job}: {needle}")),
            "{}",
            run.stderr
        );
    }
    let sweep = write_job(
        dir.path(),
        "sweep.toml",
        "ranks = 2\n[train]\ndataset = \"DATA\"\nmetrics = \"OUT/s{drop_rate}.h5\"\ncolocated = true\nsteps = 2\n[sweep]\ndrop_rate = [0.0, \"x\"]\n",
    );
    for extra in [&["--list"][..], &[]] {
        let mut args = vec!["sweep", sweep.as_str()];
        args.extend(extra);
        let run = rps(&args);
        assert!(!run.ok());
        assert!(
            run.stderr.contains("drop_rate = \"x\": invalid value 'x'"),
            "{}",
            run.stderr
        );
    }
    assert!(
        !dir.path().join("s0.h5").exists(),
        "run 0 ran before run 1 was refused"
    );
    // A value that parses but that `rps train` refuses (it used to be found only when
    // its run started, naming neither the file nor the key), and a combination that
    // does not fit its run's ranks.
    for (name, key, sweep, needle) in [
        (
            "lr.toml",
            "lr",
            "lr = [0.1, -5.0]",
            "lr = -5.0 (run 1 of 2: lr=-5): --lr -5 must be a finite number > 0",
        ),
        (
            "servers.toml",
            "servers",
            "servers = [1, 2]",
            "servers = 2 (run 1 of 2: servers=2): --servers 2 leaves no worker in a job of 2 rank(s)",
        ),
    ] {
        let job = write_job(
            dir.path(),
            name,
            &format!("ranks = 2\n[train]\ndataset = \"DATA\"\nmetrics = \"OUT/run-{{name}}-{{{key}}}.h5\"\nlr = 0.2\nservers = 1\nsteps = 2\n[sweep]\n{sweep}\n"),
        );
        for extra in [&["--list"][..], &[]] {
            let mut args = vec!["sweep", job.as_str()];
            args.extend(extra);
            let run = rps(&args);
            assert_eq!(run.code, Some(2), "{}", run.stderr);
            assert!(
                run.stderr.contains(&format!("job file {job}: {needle}")),
                "{}",
                run.stderr
            );
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("run-"))
            .collect();
        assert!(left.is_empty(), "a run started: {left:?}");
    }
}

/// SIGTERM to `rps sweep` reaches the mpirun of the running run (which used to be
/// orphaned and train on): the run stops cleanly, the sweep says which run it stopped and
/// exits 75, nothing of the job is left running, and completed runs stay completed.
#[test]
fn a_stopped_sweep_stops_its_run_and_says_which() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = out_dir();
    let job = write_job(
        dir.path(),
        "stop.toml",
        "ranks = 2\n[train]\ndataset = \"DATA\"\nmetrics = \"OUT/stop-{steps}.h5\"\ncolocated = true\nmodel = \"mlp\"\nbatch_size = 4\neval_every = 0\n[sweep]\nsteps = [2, 1000000]\n",
    );
    let out = dir.path().to_str().unwrap().to_string();
    // Every process of this test's job: its command lines name the output directory.
    let processes = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
                let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                (pid != std::process::id() as i32 && String::from_utf8_lossy(&cmd).contains(&out))
                    .then_some(pid)
            })
            .collect()
    };
    let log = dir.path().join("sweep.log");
    let _guard = lock_mpirun();
    let mut sweep = Command::new(RPS)
        .args(["sweep", &job])
        .open_mpi_env()
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let long = dir.path().join("stop-1000000.h5");
    let start = Instant::now();
    while !long.exists() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(long.exists(), "run 1 never started");
    std::thread::sleep(Duration::from_millis(500));
    let pid = sweep.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let sent = Instant::now();
    let status = loop {
        if let Some(s) = sweep.try_wait().unwrap() {
            break Some(s);
        }
        if sent.elapsed() > Duration::from_secs(30) {
            let _ = sweep.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whatever the outcome, leave no process of this test behind.
    let mut orphans = processes();
    let settle = Instant::now();
    while !orphans.is_empty() && settle.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        orphans = processes();
    }
    for p in &orphans {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
    let stderr = std::fs::read_to_string(&log).unwrap();
    let status = status.unwrap_or_else(|| panic!("the sweep ignored SIGTERM:\n{stderr}"));
    assert!(orphans.is_empty(), "left running: {orphans:?}\n{stderr}");
    assert_eq!(status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains("stopped by SIGTERM during run 1/2 (steps=1000000)"),
        "{stderr}"
    );
    assert_eq!(attr_str(&long, "status"), "interrupted");
    assert_eq!(
        attr_str(&dir.path().join("stop-2.h5"), "status"),
        "completed"
    );
    let list = rps(&["sweep", &job, "--list"]);
    list.assert_ok();
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert!(lines[0].contains("(completed)"), "{}", list.stdout);
    assert!(!lines[1].contains("(completed)"), "{}", list.stdout);
}

/// Sweep keys can advance together (`together = { .. }`), and a sweep of in-process
/// runs (`local_ranks`) starts no mpirun.
#[test]
fn sweeps_tie_keys_together_and_run_in_process() {
    let dir = out_dir();
    let job = write_job(
        dir.path(),
        "tied.toml",
        "[train]\ndataset = \"DATA\"\nmetrics = \"OUT/n{local_ranks}-s{servers}-seed{seed}.h5\"\nsteps = 2\nbatch_size = 4\n[sweep]\ntogether = { local_ranks = [2, 3], servers = [1, 2] }\nseed = [1, 2]\n",
    );
    let list = rps(&["sweep", &job, "--list"]);
    list.assert_ok();
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", list.stdout);
    assert!(
        lines[0].contains("local_ranks=2") && lines[0].contains("servers=1 seed=1"),
        "{}",
        lines[0]
    );
    assert!(
        lines[3].contains("local_ranks=3") && lines[3].contains("servers=2 seed=2"),
        "{}",
        lines[3]
    );
    // No mpirun: a launcher that does not exist would fail every run.
    let run = rps(&["sweep", &job, "--mpirun", "/nonexistent/mpirun"]);
    run.assert_ok();
    for (n, s) in [(2, 1), (3, 2)] {
        let m = dir.path().join(format!("n{n}-s{s}-seed2.h5"));
        assert_eq!(attr_i64(&m, "world_size"), n);
        assert_eq!(attr_i64(&m, "servers"), s);
        assert_eq!(attr_str(&m, "mpi_library_version"), "in-process");
    }
    let bad = write_job(
        dir.path(),
        "uneven.toml",
        "[train]\ndataset = \"DATA\"\nmetrics = \"OUT/x{ranks}.h5\"\n[sweep]\ntogether = { ranks = [2, 3], servers = [1] }\n",
    );
    let run = rps(&["sweep", &bad, "--list"]);
    assert!(!run.ok());
    assert!(
        run.stderr
            .contains("lists that advance together need one length"),
        "{}",
        run.stderr
    );
}

/// Every sweep job file the project ships (jobs/ and its folders) still lists its runs:
/// a flag renamed or a value made invalid shows here, not hours into a sweep.
#[test]
fn shipped_sweep_job_files_list_their_runs() {
    fn toml_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                toml_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    toml_files(&root.join("jobs"), &mut files);
    let sweeps: Vec<_> = files
        .iter()
        .filter(|f| std::fs::read_to_string(f).unwrap().contains("[sweep]"))
        .collect();
    assert!(sweeps.len() >= 10, "{sweeps:?}");
    for f in sweeps {
        let run = rps(&["sweep", f.to_str().unwrap(), "--list"]);
        assert!(run.ok(), "{}: {}", f.display(), run.stderr);
        assert!(!run.stdout.is_empty(), "{}", f.display());
    }
}
