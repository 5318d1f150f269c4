//! What machine a measurement ran on: CPU model and the flags that choose kernels, the
//! instruction set the kernels use, cores, load, OS, kernel, MPI and HDF5 libraries, the
//! build and the commit. `rps bench` prints it beside its timings, and `rps provenance`
//! writes it as the provenance block of a results page, so that no figure stands without
//! the machine that produced it.

use std::process::Command;

/// The fingerprint of this machine and build, read when asked.
#[derive(Debug, Clone)]
pub struct Fingerprint {
    pub date: String,
    pub cpu: String,
    /// The CPU flags that decide which kernels run (avx2, fma, avx512f), present ones.
    pub flags: Vec<&'static str>,
    /// The instruction set the engine's kernels use (`RPS_KERNELS` capped at the CPU's).
    pub kernels: &'static str,
    pub cores: usize,
    pub load: String,
    pub os: String,
    pub kernel: String,
    pub build: String,
    pub hdf5: String,
}

impl Fingerprint {
    /// Reads the fingerprint now (the load average is that of this moment).
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        };
        let cpu = field("model name").unwrap_or_else(|| std::env::consts::ARCH.into());
        let present = field("flags").unwrap_or_default();
        let flags = ["avx2", "fma", "avx512f"]
            .into_iter()
            .filter(|f| present.split_whitespace().any(|p| p == *f))
            .collect();
        let first_line = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.lines().next().map(str::to_string))
                .unwrap_or_else(|| "unknown".into())
        };
        let load = first_line("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| std::env::consts::OS.into());
        let (maj, min, rel) = hdf5::library_version();
        Fingerprint {
            date: utc_now(),
            cpu,
            flags,
            kernels: crate::nn::simd::isa().name(),
            cores: std::thread::available_parallelism().map_or(0, |c| c.get()),
            load,
            os,
            kernel: first_line("/proc/sys/kernel/osrelease"),
            build: crate::build_id::identity().to_string(),
            hdf5: format!("{maj}.{min}.{rel}"),
        }
    }

    /// One line: `CPU (flags; kernels K), N cores, load L, OS, Linux V`.
    pub fn line(&self) -> String {
        format!(
            "{} ({}; kernels {}), {} cores, load average {}, {}, Linux {}",
            self.cpu,
            self.flags.join(" "),
            self.kernels,
            self.cores,
            self.load,
            self.os,
            self.kernel
        )
    }
}

/// `YYYY-MM-DD HH:MM UTC`, from the system clock (no time-zone database needed).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// The commit of the working tree (short hash, with `-dirty` when a tracked file other
/// than documentation differs from it: results pages being rewritten are not a change of
/// what produced them), or `None` outside a git checkout.
pub fn commit() -> Option<String> {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let hash = run(&["rev-parse", "--short", "HEAD"])?;
    let dirty = run(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":!docs",
        ":!*.md",
    ])
    .is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}

/// The first line of `mpirun --version` (the MPI library the scripts launch with).
pub fn mpi_version() -> String {
    Command::new("mpirun")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "not found".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_is_a_civil_utc_date() {
        let d = utc_now();
        assert_eq!(d.len(), "2026-12-06 21:40 UTC".len(), "{d}");
        let year: i32 = d[..4].parse().unwrap();
        assert!((2024..2200).contains(&year), "{d}");
        let f = Fingerprint::read();
        assert!(f.cores >= 1);
        assert!(f.line().contains("kernels"));
    }
}
