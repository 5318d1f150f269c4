//! The wire between the RPS algorithm and the network.
//!
//! [`Transport`] is the one trait the training code talks to: point-to-point exchanges
//! of `f32` blocks (the lossy part of RPS, where drops are decided by the caller) and a
//! few reliable collectives used for evaluation, metrics and error agreement. The MPI
//! implementation lives in [`mpi`] (the only module that imports the `mpi` crate); an
//! in-process implementation in [`local`] makes unit tests fast and deterministic.

pub mod local;
pub mod mpi;
pub mod reduce;
pub mod udp;
pub mod watch;

use thiserror::Error;

/// One outgoing message of an exchange.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub to: usize,
    pub tag: i32,
    pub data: &'a [f32],
    /// How a datagram transport cuts the message (message transports send `data` whole).
    pub framing: Option<Framing<'a>>,
}

/// The structure of a message, for transports that cut it into datagrams: the first
/// `prefix` elements are a header repeated in every datagram, the rest (the body) is cut
/// into fragments of `fragment` elements; fragment `k` is sent only where `send[k]`.
/// Receivers get each fragment as `prefix + fragment` with its body offset
/// ([`Mailbox::deliver`]).
#[derive(Debug, Clone, Copy)]
pub struct Framing<'a> {
    pub prefix: usize,
    pub fragment: usize,
    pub send: &'a [bool],
}

/// One expected incoming message of an exchange; `buf.len()` is the exact message length.
#[derive(Debug)]
pub struct Incoming<'a> {
    pub from: usize,
    pub tag: i32,
    pub buf: &'a mut [f32],
}

#[derive(Debug, Error)]
pub enum CommError {
    #[error("message from rank {from} (tag {tag}) has {found} elements, expected {expected}")]
    Length {
        from: usize,
        tag: i32,
        expected: usize,
        found: usize,
    },
    #[error("rank {0} is outside the communicator of size {1}")]
    Rank(usize, usize),
    #[error("a message to rank {to} needs datagrams of {bytes} bytes, over the limit of {limit}")]
    Datagram {
        to: usize,
        bytes: usize,
        limit: usize,
    },
}

/// The network as seen by one rank.
///
/// Collectives must be called by every rank of the job in the same order (MPI semantics).
pub trait Transport {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;

    /// Posts every send and receive of one exchange phase, nonblocking, and completes all
    /// of them before returning. The caller only lists messages that will really be sent
    /// (drops are decided before, identically on both ends), so this never waits for a
    /// message that will not come.
    ///
    /// # Errors
    /// A received message whose length differs from its buffer.
    fn exchange(&self, sends: &[Outgoing<'_>], recvs: &mut [Incoming<'_>])
        -> Result<(), CommError>;

    /// Reliable element-wise sum over all ranks, result on every rank, added in rank
    /// order ([`reduce`]): the same bits on every transport and MPI library.
    fn allreduce_sum_f32(&self, buf: &mut [f32]);
    /// Reliable element-wise sum over all ranks, result on every rank, in rank order.
    fn allreduce_sum_f64(&self, buf: &mut [f64]);
    /// The sum of `send` over all ranks into `recv` by the transport's native all-reduce,
    /// in whatever order it adds (MPI_Allreduce on MPI): only for `rps bench-exchange`,
    /// which times it beside the fixed-order one. The default is the fixed-order sum.
    fn allreduce_sum_f32_native(&self, send: &[f32], recv: &mut [f32]) {
        recv.copy_from_slice(send);
        self.allreduce_sum_f32(recv);
    }
    /// Gathers `send` (the same length on every rank) from all ranks, in rank order.
    fn allgather_bytes(&self, send: &[u8]) -> Vec<u8>;
    fn barrier(&self);
    /// Deadline exchange: posts `sends`, then hands every message that arrives (from any
    /// rank, with any tag) to `mailbox`, until all sends have completed and either the
    /// mailbox has everything it waits for or `deadline` has passed. Polls with short
    /// sleeps rather than spinning, since ranks may share cores. Never cancels anything:
    /// a message that arrives after the deadline is handed over marked late.
    ///
    /// # Errors
    /// A destination outside the communicator; a message a datagram transport cannot cut.
    fn exchange_until(
        &self,
        sends: &[Outgoing<'_>],
        deadline: std::time::Instant,
        mailbox: &mut dyn Mailbox,
    ) -> Result<(), CommError>;

    /// Drains every message still in flight while all ranks meet in a nonblocking
    /// barrier, handing each to `mailbox` as late. Called by every rank before any
    /// collective that follows deadline exchanges, and before the end, so that no
    /// message outlives the step it belonged to and MPI_Finalize has nothing to wait for.
    fn quiesce(&self, mailbox: &mut dyn Mailbox);

    /// Whether messages with [`Framing`] travel as separate datagrams (each fragment on
    /// its own, lost on its own) rather than whole.
    fn datagrams(&self) -> bool {
        false
    }

    /// Datagrams refused so far (foreign sender or job, malformed header); 0 for
    /// transports that cannot receive anything but their peers' messages.
    fn rejected(&self) -> u64 {
        0
    }

    /// Datagrams lost on this host so far (refused by the local stack, or dropped by the
    /// kernel for a full receive buffer); 0 for transports that retransmit.
    fn host_losses(&self) -> u64 {
        0
    }

    /// Kills the whole job at once (used when one rank fails where the others cannot
    /// learn of it, so nobody hangs waiting for it).
    fn abort(&self, code: i32) -> !;

    /// Ranks that share this rank's host, and so its memory (for the memory check before
    /// data is loaded): what the launcher says (OpenMPI, MPICH), else 1.
    fn ranks_on_host(&self) -> usize {
        ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
            .iter()
            .find_map(|v| std::env::var(v).ok()?.parse().ok())
            .unwrap_or(1)
    }

    /// Host name and MPI library description, for the metrics file.
    fn processor_name(&self) -> String;
    fn library_version(&self) -> String;
}

/// Receives the messages of a deadline exchange.
pub trait Mailbox {
    /// A message, or one fragment of it, from rank `from` with `tag`; `late` when its
    /// deadline had passed. `data` is the whole message (`offset` 0) or, with
    /// [`Framing`], the prefix followed by the body elements starting at `offset`.
    fn deliver(&mut self, from: usize, tag: i32, data: &[f32], offset: usize, late: bool);
    /// Whether every awaited message has arrived (the exchange may stop early).
    fn complete(&self) -> bool;
    /// The deadline in force, given the one the exchange started with (a mailbox may
    /// move it once something has arrived).
    fn deadline(&self, given: std::time::Instant) -> std::time::Instant {
        given
    }
}

/// How long a polling loop sleeps when nothing happened: short against a step of tens
/// of milliseconds, long enough to leave the core to a rank sharing it.
pub const POLL_SLEEP: std::time::Duration = std::time::Duration::from_micros(200);

/// Length of each rank's slot in [`agree`]'s message exchange.
const MESSAGE_SLOT: usize = 1024;

/// Failure learned through [`agree`]: which rank failed first and why.
#[derive(Debug, Error)]
#[error("rank {rank} failed: {message}")]
pub struct Disagreement {
    /// Lowest failing rank.
    pub rank: usize,
    /// Its error message (truncated to about 1 KB).
    pub message: String,
    /// This rank's own error, if it failed too.
    pub own: Option<anyhow::Error>,
}

/// Collective error agreement: every rank passes its local outcome and every rank learns
/// whether any rank failed, so a bad input stops all ranks together instead of leaving
/// the healthy ones waiting in the next collective.
///
/// # Errors
/// If any rank failed: the lowest failing rank and its message, plus this rank's own
/// error where it has one.
pub fn agree<T, X>(t: &T, local: anyhow::Result<X>) -> Result<X, Disagreement>
where
    T: Transport + ?Sized,
{
    let mut slot = vec![0u8; MESSAGE_SLOT];
    if let Err(e) = &local {
        // Byte 0 flags failure; the rest carries the message, cut on a char boundary.
        slot[0] = 1;
        let text = format!("{e:#}");
        let mut end = text.len().min(MESSAGE_SLOT - 1);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        slot[1..1 + end].copy_from_slice(&text.as_bytes()[..end]);
    }
    let all = t.allgather_bytes(&slot);
    let first = all
        .chunks(MESSAGE_SLOT)
        .enumerate()
        .find(|(_, s)| s[0] == 1);
    match (first, local) {
        (None, Ok(x)) => Ok(x),
        (None, Err(e)) => unreachable!("own failure not seen in the gathered flags: {e:#}"),
        (Some((rank, s)), local) => {
            let body = &s[1..];
            let len = body.iter().position(|&b| b == 0).unwrap_or(body.len());
            Err(Disagreement {
                rank,
                message: String::from_utf8_lossy(&body[..len]).into_owned(),
                own: local.err(),
            })
        }
    }
}
