//! Which results a list of files holds, decided once for `rps report` and `rps plot`:
//! metrics files (HDF5), netsim results (CSV), `rps bench-exchange --csv` files (CSV,
//! recognised by their header) or a testbed index (`--testbed`). Each kind then has one
//! reader: `metrics::read` (through `report`), `netsim`, `bench_exchange::csv`,
//! `testbed`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::bench::exchange::csv::is_csv;
use crate::netsim::is_results_file;

/// What a list of result files is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Metrics files of training runs (`--claim` reads the same files).
    Metrics,
    /// Results of the ns-3 simulation (`netsim/run.sh`).
    Netsim,
    /// Cost curves of `rps bench-exchange --csv`.
    BenchExchange,
    /// The one index file of a testbed run (`jobs/testbed.sh`).
    TestbedIndex,
}

/// The kind of `files`; `testbed` is the `--testbed` flag.
///
/// # Errors
/// `--testbed` with other than one file, metrics files mixed with CSV files, or
/// bench-exchange files mixed with netsim results.
pub fn kind(files: &[PathBuf], testbed: bool) -> Result<Kind> {
    if testbed {
        testbed_index(files)?;
        return Ok(Kind::TestbedIndex);
    }
    let csv = files.iter().filter(|p| is_results_file(p)).count();
    if csv == 0 {
        return Ok(Kind::Metrics);
    }
    if csv < files.len() {
        bail!("give either metrics files (.h5) or CSV results (.csv), not both");
    }
    let bench = files.iter().filter(|p| is_csv(p)).count();
    match bench {
        0 => Ok(Kind::Netsim),
        b if b == files.len() => Ok(Kind::BenchExchange),
        _ => bail!("give either bench-exchange CSV files or netsim results, not both"),
    }
}

/// The one index file that `--testbed` takes.
///
/// # Errors
/// Other than one file.
pub fn testbed_index(files: &[PathBuf]) -> Result<&Path> {
    match files {
        [one] => Ok(one),
        _ => bail!(
            "--testbed takes one index file (jobs/testbed.sh writes OUTDIR/index.csv), got {}",
            files.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_told_apart_and_mixtures_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bench = dir.path().join("x.csv");
        std::fs::write(&bench, format!("{}\n", crate::bench::exchange::CSV_HEADER)).unwrap();
        let netsim = dir.path().join("r.csv");
        std::fs::write(&netsim, "policy,load\n").unwrap();
        let h5 = PathBuf::from("a.h5");
        assert_eq!(
            kind(std::slice::from_ref(&h5), false).unwrap(),
            Kind::Metrics
        );
        assert_eq!(
            kind(std::slice::from_ref(&bench), false).unwrap(),
            Kind::BenchExchange
        );
        assert_eq!(
            kind(std::slice::from_ref(&netsim), false).unwrap(),
            Kind::Netsim
        );
        assert_eq!(
            kind(std::slice::from_ref(&netsim), true).unwrap(),
            Kind::TestbedIndex
        );
        assert!(kind(&[h5.clone(), netsim.clone()], false).is_err());
        assert!(kind(&[bench, netsim.clone()], false).is_err());
        assert!(kind(&[h5, netsim], true).is_err());
    }
}
