//! `rps bench-exchange`: the cost curve of one RPS exchange against an all-reduce (sum,
//! f32) of the same buffer, per buffer size, drop rate and mode, on every rank of the job.
//! It drives the training's own [`Exchange::step`] over the real transport with a
//! synthetic parameter buffer (no dataset, no model). Every timed repeat starts after a
//! barrier and counts as long as its slowest rank took; bytes come from the exchange's
//! own counters. A rank-to-rank exchange and a memcpy of each size give the bandwidth line.

use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use crate::bench::Spread;
use crate::comm::{Incoming, Outgoing, Transport};
use crate::counters::StepCounters;
use crate::drop;
use crate::exchange::{Exchange, Layout, Mode, MAX_CHUNKS};

pub mod csv;
mod output;
pub mod plot;
pub use csv::CSV_HEADER;

/// Which role split to benchmark; dedicated's server count depends on the job's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roles {
    /// The first S ranks are servers, the rest workers.
    Dedicated,
    /// Every rank is a worker and the server of one block.
    Colocated,
}

/// What to benchmark, as given on the command line (validated by [`Options::plan`]).
#[derive(Debug, Clone)]
pub struct Options {
    /// Buffer sizes in bytes (multiples of 4: the buffer holds f32 values).
    pub sizes: Vec<u64>,
    /// i.i.d. Bernoulli drop rates, each in [0, 1); must include 0.
    pub drop_rates: Vec<f64>,
    pub modes: Vec<Roles>,
    /// Servers of dedicated mode [default: half the ranks, at least 1].
    pub servers: Option<usize>,
    pub warmup: usize,
    pub repeats: usize,
    /// Seed of the drop decisions and of co-located mode's block assignment.
    pub seed: u64,
    /// Bytes per chunk of the pipelined exchange [default: one chunk, not pipelined].
    pub chunk_bytes: Option<usize>,
    /// Write every measured row as CSV to this file (rank 0).
    pub csv: Option<PathBuf>,
}

/// Validated options for a job of a known size.
#[derive(Debug)]
pub struct Plan {
    pub sizes: Vec<u64>,
    pub drop_rates: Vec<f64>,
    pub modes: Vec<Mode>,
    pub warmup: usize,
    pub repeats: usize,
    pub seed: u64,
    /// Elements per chunk of the pipelined exchange (`usize::MAX`: one chunk).
    pub chunk_elems: usize,
    /// The CSV file, opened on rank 0 only.
    pub csv: Option<(PathBuf, File)>,
}

impl Options {
    /// Checks the options against a job of `size` ranks, `ranks_here` of them on this
    /// host; `rank` 0 also creates the CSV file, so an unwritable path fails before
    /// anything is measured.
    ///
    /// # Errors
    /// The first invalid option, named by its flag.
    pub fn plan(&self, size: usize, rank: usize, ranks_here: usize) -> Result<Plan> {
        ensure!(!self.sizes.is_empty(), "--sizes is empty");
        ensure!(!self.drop_rates.is_empty(), "--drop-rates is empty");
        ensure!(!self.modes.is_empty(), "--modes is empty");
        ensure!(self.repeats > 0, "--repeats must be at least 1");
        if let Some(chunk_bytes) = self.chunk_bytes {
            ensure!(
                chunk_bytes > 0 && chunk_bytes.is_multiple_of(4),
                "--chunk-bytes {chunk_bytes} must be a positive multiple of 4 (one f32 element)"
            );
        }
        for &p in &self.drop_rates {
            ensure!(
                (0.0..1.0).contains(&p),
                "--drop-rates: {p} is outside [0, 1)"
            );
        }
        ensure!(
            self.drop_rates.contains(&0.0),
            "--drop-rates must include 0: the ratio lines compare RPS at p = 0 with the all-reduce"
        );
        let mut modes = Vec::new();
        for &m in &self.modes {
            let mode = match m {
                Roles::Colocated => Mode::Colocated,
                Roles::Dedicated => {
                    ensure!(size >= 2, "--modes dedicated needs at least 2 ranks (a server and a worker), this job has {size}: run it with mpirun -n 2 or more, or with --modes colocated");
                    let servers = self.servers.unwrap_or((size / 2).max(1));
                    ensure!(
                        (1..size).contains(&servers),
                        "--servers {servers}: dedicated mode needs between 1 and {} servers in a job of {size} ranks",
                        size - 1
                    );
                    Mode::Dedicated { servers }
                }
            };
            if !modes.contains(&mode) {
                modes.push(mode);
            }
        }
        let blocks = modes.iter().map(|&m| blocks_of(m, size)).max().unwrap_or(1);
        for &b in &self.sizes {
            ensure!(b > 0, "--sizes: a buffer of 0 bytes is nothing to exchange");
            ensure!(
                b % 4 == 0,
                "--sizes: {b} bytes is not a whole number of f32 values (use a multiple of 4)"
            );
            ensure!(
                b / 4 >= blocks as u64,
                "--sizes: {b} bytes hold {} f32 values, fewer than the {blocks} blocks of a job of {size} ranks",
                b / 4
            );
        }
        if let Some(&largest) = self.sizes.iter().max() {
            check_memory(largest, &modes, self.drop_rates.len(), size, ranks_here)?;
        }
        let csv = match (&self.csv, rank) {
            (Some(path), 0) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("--csv: cannot create {}", dir.display()))?;
                }
                let file = File::create(path)
                    .with_context(|| format!("--csv: cannot create {}", path.display()))?;
                Some((path.clone(), file))
            }
            _ => None,
        };
        let mut sizes = self.sizes.clone();
        sizes.sort_unstable();
        sizes.dedup();
        let mut drop_rates = self.drop_rates.clone();
        drop_rates.sort_by(f64::total_cmp);
        drop_rates.dedup();
        Ok(Plan {
            sizes,
            drop_rates,
            modes,
            warmup: self.warmup,
            repeats: self.repeats,
            seed: self.seed,
            chunk_elems: self.chunk_bytes.map_or(usize::MAX, |b| b / 4),
            csv,
        })
    }
}

/// Refuses buffers that this host cannot hold before any is allocated (a buffer of
/// 1e12 bytes used to abort every rank). A rank holds the buffer, the all-reduce's
/// result, and for each drop rate an exchange that keeps what it receives (a server of
/// dedicated mode takes one block from each of its workers: workers/servers buffers'
/// worth; every other role about one buffer). Blocks it averages are smaller and left
/// out: this is a floor, so nothing that fits is refused.
fn check_memory(
    bytes: u64,
    modes: &[Mode],
    rates: usize,
    size: usize,
    ranks_here: usize,
) -> Result<()> {
    let Some(available) = crate::memory::available() else {
        return Ok(());
    };
    let received = modes
        .iter()
        .map(|&m| match m {
            Mode::Dedicated { servers } => (size - servers).div_ceil(servers).max(1),
            Mode::Colocated => 1,
        })
        .max()
        .unwrap_or(1);
    let copies = 2 + (rates * received) as u128;
    let per_rank = copies * u128::from(bytes);
    let gib = crate::memory::gib;
    ensure!(
        per_rank * ranks_here.max(1) as u128 <= u128::from(available),
        "--sizes: buffers of {bytes} bytes need about {:.1} GiB per rank ({copies} buffers: the data, the all-reduce's result, what the exchange of each drop rate receives), and {ranks_here} rank(s) share this host's {:.1} GiB of available memory; use smaller --sizes",
        gib(per_rank),
        gib(available.into())
    );
    Ok(())
}

fn blocks_of(mode: Mode, size: usize) -> usize {
    match mode {
        Mode::Dedicated { servers } => servers,
        Mode::Colocated => size,
    }
}

/// What one row measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// One RPS exchange (`Exchange::step`).
    Rps,
    /// All-reduce (sum, f32) of the whole buffer on every rank: MPI_Allreduce itself, the
    /// reference (it adds in an order of the library's choosing).
    Allreduce,
    /// The same sum in rps's fixed rank order (what the all-reduce baseline of
    /// `rps train` runs): a reduce-scatter and an all-gather of point-to-point messages.
    AllreduceFixed,
    /// Ranks 0 and 1 swap the buffer (each sends and receives it at once).
    Pair,
    /// Rank 0 copies the buffer in memory.
    Memcpy,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Rps => "rps",
            Op::Allreduce => "allreduce",
            Op::AllreduceFixed => "allreduce-fixed",
            Op::Pair => "pair",
            Op::Memcpy => "memcpy",
        }
    }
}

/// One measured row: times in milliseconds (slowest rank per repeat), traffic per
/// exchange summed over ranks (RPS only).
#[derive(Debug, Clone)]
pub struct Row {
    pub op: Op,
    /// `dedicated` or `colocated` (RPS and all-reduce rows), else `-`.
    pub mode: &'static str,
    pub bytes: u64,
    /// Drop rate (RPS rows only).
    pub p: Option<f64>,
    pub time: Spread,
    /// Payload bytes posted per exchange, all ranks together.
    pub wire_bytes: Option<f64>,
    /// Messages posted and messages the drop model discarded, per exchange.
    pub sent: Option<f64>,
    pub dropped: Option<f64>,
}

/// Runs the whole benchmark on every rank; rank 0 prints the report and writes the CSV.
/// Collective: every rank must call it with the same plan.
///
/// # Errors
/// A transport failure in the exchange, or (rank 0) an unwritable CSV file.
pub fn run<T: Transport + ?Sized>(t: &T, plan: &mut Plan) -> Result<Vec<Row>> {
    let (n, me) = (t.size(), t.rank());
    let speak = me == 0;
    if speak {
        println!(
            "rps bench-exchange: {n} ranks ({} on this host; rank 0 may run on {} core(s)), {}; warm-up {}, repeats {}; each time is the slowest rank's, after a barrier; RPS messages {}",
            t.ranks_on_host(),
            std::thread::available_parallelism().map_or(0, |c| c.get()),
            t.library_version().lines().next().unwrap_or_default(),
            plan.warmup,
            plan.repeats,
            match plan.chunk_elems {
                usize::MAX => "whole (not pipelined; --chunk-bytes pipelines them)".to_string(),
                e => format!("pipelined in chunks of {} bytes, at most {MAX_CHUNKS}", 4 * e),
            }
        );
        for m in &plan.modes {
            println!("  {}", describe(*m, n));
        }
    }
    let mut rows = Vec::new();
    for &bytes in &plan.sizes {
        let elems = (bytes / 4) as usize;
        let mut params: Vec<f32> = (0..elems)
            .map(|i| me as f32 + (i % 1024) as f32 / 1024.0)
            .collect();
        let mut sum = vec![0f32; elems];
        rows.extend(bandwidth(t, plan, &params, &mut sum)?);
        for &mode in &plan.modes {
            rows.extend(one_mode(t, plan, mode, &mut params, &mut sum)?);
        }
    }
    if speak {
        output::report(&rows, n);
        if let Some((path, file)) = &mut plan.csv {
            output::write_csv(file, &rows, n)
                .with_context(|| format!("--csv: cannot write {}", path.display()))?;
            println!("wrote {}", path.display());
        }
        output::ratios(&rows, n);
    }
    Ok(rows)
}

/// One line on who does what in `mode`.
fn describe(mode: Mode, n: usize) -> String {
    match mode {
        Mode::Dedicated { servers } => format!(
            "dedicated: ranks 0..{servers} are servers, {servers}..{n} workers; {servers} block(s), all-reduce over all {n} ranks"
        ),
        Mode::Colocated => format!(
            "colocated: all {n} ranks are workers and each the server of one of {n} blocks (a fresh assignment each step)"
        ),
    }
}

/// Times one call of `op` on this rank, after a barrier; milliseconds.
fn timed<T: Transport + ?Sized>(t: &T, mut op: impl FnMut() -> Result<()>) -> Result<f64> {
    t.barrier();
    let start = Instant::now();
    op()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// Per repeat, the slowest rank's time (a collective).
fn slowest<T: Transport + ?Sized>(t: &T, mine: &[f64]) -> Vec<f64> {
    let bytes: Vec<u8> = mine.iter().flat_map(|x| x.to_le_bytes()).collect();
    let all = t.allgather_bytes(&bytes);
    let per_rank: Vec<Vec<f64>> = all
        .chunks(bytes.len().max(1))
        .map(|c| {
            c.chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or_default()))
                .collect()
        })
        .collect();
    (0..mine.len())
        .map(|i| per_rank.iter().map(|r| r[i]).fold(f64::MIN, f64::max))
        .collect()
}

fn spread_of<T: Transport + ?Sized>(t: &T, mine: &[f64]) -> Result<Spread> {
    Spread::of(&slowest(t, mine)).context("no timed repeats")
}

/// The bandwidth rows of one size: ranks 0 and 1 swap the buffer, rank 0 copies it.
fn bandwidth<T: Transport + ?Sized>(
    t: &T,
    plan: &Plan,
    params: &[f32],
    scratch: &mut [f32],
) -> Result<Vec<Row>> {
    const TAG: i32 = 32_000;
    let (n, me) = (t.size(), t.rank());
    let bytes = 4 * params.len() as u64;
    let mut rows = Vec::new();
    let total = plan.warmup + plan.repeats;
    if n >= 2 {
        let mut times = Vec::with_capacity(total);
        for _ in 0..total {
            times.push(timed(t, || {
                if me < 2 {
                    let peer = 1 - me;
                    let sends = [Outgoing {
                        to: peer,
                        tag: TAG,
                        data: params,
                        framing: None,
                    }];
                    let mut recvs = [Incoming {
                        from: peer,
                        tag: TAG,
                        buf: &mut scratch[..],
                    }];
                    t.exchange(&sends, &mut recvs)?;
                }
                Ok(())
            })?);
        }
        rows.push(plain_row(
            Op::Pair,
            bytes,
            spread_of(t, &times[plan.warmup..])?,
        ));
    }
    let mut times = Vec::with_capacity(total);
    for _ in 0..total {
        times.push(timed(t, || {
            if me == 0 {
                scratch.copy_from_slice(params);
                std::hint::black_box(&scratch);
            }
            Ok(())
        })?);
    }
    rows.push(plain_row(
        Op::Memcpy,
        bytes,
        spread_of(t, &times[plan.warmup..])?,
    ));
    Ok(rows)
}

fn plain_row(op: Op, bytes: u64, time: Spread) -> Row {
    Row {
        op,
        mode: "-",
        bytes,
        p: None,
        time,
        wire_bytes: None,
        sent: None,
        dropped: None,
    }
}

/// The all-reduce row and one RPS row per drop rate for one size and mode. The
/// operations alternate within each repeat, so a change in the machine's load touches
/// all of them alike.
fn one_mode<T: Transport + ?Sized>(
    t: &T,
    plan: &Plan,
    mode: Mode,
    params: &mut [f32],
    sum: &mut [f32],
) -> Result<Vec<Row>> {
    let (n, me) = (t.size(), t.rank());
    let elems = params.len();
    let total = plan.warmup + plan.repeats;
    let layout = Layout::new(n, mode, elems, plan.seed)?;
    let worker = layout.is_worker(me);
    let mut exchanges = Vec::new();
    for &p in &plan.drop_rates {
        // The training runs' drop stream (train::drops builds the same Bernoulli model).
        let model = drop::Bernoulli::with_rates(drop::drop_seed(plan.seed), p, p);
        exchanges.push(
            Exchange::new(layout.clone(), Box::new(model), None).with_chunk_elems(plan.chunk_elems),
        );
    }
    let mut allreduce = Vec::with_capacity(total);
    let mut fixed = Vec::with_capacity(total);
    let mut rps = vec![Vec::with_capacity(total); exchanges.len()];
    let mut counts = vec![StepCounters::default(); exchanges.len()];
    for i in 0..total {
        allreduce.push(timed(t, || {
            t.allreduce_sum_f32_native(params, sum);
            Ok(())
        })?);
        fixed.push(timed(t, || {
            sum.copy_from_slice(params);
            t.allreduce_sum_f32(sum);
            Ok(())
        })?);
        for (k, ex) in exchanges.iter_mut().enumerate() {
            // A pure server holds no replica (as in training).
            let replica: &mut [f32] = if worker { &mut *params } else { &mut [] };
            let mut c = StepCounters::default();
            rps[k].push(timed(t, || {
                c = ex.step(t, i as u64, replica)?;
                Ok(())
            })?);
            if i >= plan.warmup {
                counts[k].add(&c);
            }
        }
    }
    let name = mode.name();
    let mut rows = vec![
        Row {
            mode: name,
            ..plain_row(
                Op::Allreduce,
                4 * elems as u64,
                spread_of(t, &allreduce[plan.warmup..])?,
            )
        },
        Row {
            mode: name,
            ..plain_row(
                Op::AllreduceFixed,
                4 * elems as u64,
                spread_of(t, &fixed[plan.warmup..])?,
            )
        },
    ];
    for (k, &p) in plan.drop_rates.iter().enumerate() {
        let c = &counts[k];
        let mut traffic = [
            c.bytes_sent as f64,
            (c.sent_up + c.sent_down) as f64,
            (c.dropped_up + c.dropped_down) as f64,
        ];
        t.allreduce_sum_f64(&mut traffic);
        let per = |x: f64| Some(x / plan.repeats as f64);
        rows.push(Row {
            op: Op::Rps,
            mode: name,
            bytes: 4 * elems as u64,
            p: Some(p),
            time: spread_of(t, &rps[k][plan.warmup..])?,
            wire_bytes: per(traffic[0]),
            sent: per(traffic[1]),
            dropped: per(traffic[2]),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::local::LocalTransport;

    fn options() -> Options {
        Options {
            sizes: vec![4000, 400],
            drop_rates: vec![0.1, 0.0],
            modes: vec![Roles::Dedicated, Roles::Colocated],
            servers: None,
            warmup: 1,
            repeats: 4,
            seed: 3,
            chunk_bytes: None,
            csv: None,
        }
    }

    /// A change to the options, the job size, and the message it must give.
    type Case = (fn(&mut Options), usize, &'static str);

    #[test]
    fn bad_options_name_their_flag() {
        let cases: [Case; 8] = [
            (|o| o.sizes = vec![0], 4, "--sizes: a buffer of 0 bytes"),
            (|o| o.sizes = vec![10], 4, "--sizes: 10 bytes"),
            (
                |o| o.drop_rates = vec![0.0, 1.0],
                4,
                "--drop-rates: 1 is outside",
            ),
            (
                |o| o.drop_rates = vec![0.1],
                4,
                "--drop-rates must include 0",
            ),
            (|_| {}, 1, "--modes dedicated needs at least 2 ranks"),
            (|o| o.servers = Some(4), 4, "--servers 4"),
            (|o| o.chunk_bytes = Some(6), 4, "--chunk-bytes 6 must be"),
            (
                |o| o.sizes = vec![4000, 1 << 50],
                4,
                "--sizes: buffers of 1125899906842624 bytes need about",
            ),
        ];
        for (change, size, message) in cases {
            let mut o = options();
            change(&mut o);
            let e = format!("{:#}", o.plan(size, 1, 1).unwrap_err());
            assert!(e.contains(message), "{e:?} lacks {message:?}");
        }
        let plan = options().plan(4, 1, 1).unwrap();
        assert_eq!(plan.sizes, [400, 4000]);
        assert_eq!(plan.drop_rates, [0.0, 0.1]);
        assert_eq!(
            plan.modes,
            [Mode::Dedicated { servers: 2 }, Mode::Colocated]
        );
    }

    #[test]
    fn counts_traffic_of_the_real_exchange_on_every_rank() {
        let n = 4;
        let handles: Vec<_> = LocalTransport::network(n)
            .into_iter()
            .map(|t| {
                std::thread::spawn(move || {
                    let mut plan = options().plan(n, 1, 1).unwrap();
                    run(&t, &mut plan).unwrap()
                })
            })
            .collect();
        let all: Vec<Vec<Row>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let rows = &all[0];
        // Per size: pair, memcpy, then per mode two all-reduces and two RPS rows.
        assert_eq!(rows.len(), 2 * (2 + 2 * 4));
        let find = |mode: &str, bytes: u64, p: f64| {
            rows.iter()
                .find(|r| r.op == Op::Rps && r.mode == mode && r.bytes == bytes && r.p == Some(p))
                .unwrap()
        };
        // p = 0: dedicated moves every worker's replica up and back (2 servers, 2
        // workers: 2·2 messages each way); co-located moves n − 1 of n blocks per rank
        // each way.
        let d = find("dedicated", 4000, 0.0);
        assert_eq!(d.wire_bytes, Some(2.0 * 2.0 * 4000.0));
        assert_eq!((d.sent, d.dropped), (Some(8.0), Some(0.0)));
        let c = find("colocated", 4000, 0.0);
        assert_eq!(c.wire_bytes, Some(2.0 * 3.0 * 4000.0));
        assert_eq!(c.sent, Some(24.0));
        let lossy = find("colocated", 4000, 0.1);
        // Four repeats of 24 messages at p = 0.1 (seed 3) lose some, and their bytes
        // (a block is 1,000 bytes).
        assert!(lossy.dropped > Some(0.0), "{lossy:?}");
        assert_eq!(lossy.wire_bytes, lossy.sent.map(|s| s * 1000.0));
        // Every rank computed the same slowest-rank times.
        for other in &all[1..] {
            assert_eq!(other[5].time, rows[5].time);
        }
    }
}
