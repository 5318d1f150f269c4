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
    /// Gathers `send` (the same length on every rank) on rank 0 only, in rank order
    /// (`None` on the other ranks): for what only rank 0 writes, so that no rank holds
    /// every rank's data when it does not need it.
    fn gather_bytes(&self, send: &[u8]) -> Option<Vec<u8>>;
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

/// A borrowed transport is a transport: so that an owner of `Box<dyn Transport + 'a>`
/// (a [`crate::session::Session`]) can run on a transport that outlives it, such as the
/// process's one MPI environment. Every method, the provided ones included, is the
/// borrowed transport's own.
impl<T: Transport + ?Sized> Transport for &T {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn size(&self) -> usize {
        (**self).size()
    }
    fn exchange(
        &self,
        sends: &[Outgoing<'_>],
        recvs: &mut [Incoming<'_>],
    ) -> Result<(), CommError> {
        (**self).exchange(sends, recvs)
    }
    fn allreduce_sum_f32(&self, buf: &mut [f32]) {
        (**self).allreduce_sum_f32(buf)
    }
    fn allreduce_sum_f64(&self, buf: &mut [f64]) {
        (**self).allreduce_sum_f64(buf)
    }
    fn allreduce_sum_f32_native(&self, send: &[f32], recv: &mut [f32]) {
        (**self).allreduce_sum_f32_native(send, recv)
    }
    fn allgather_bytes(&self, send: &[u8]) -> Vec<u8> {
        (**self).allgather_bytes(send)
    }
    fn gather_bytes(&self, send: &[u8]) -> Option<Vec<u8>> {
        (**self).gather_bytes(send)
    }
    fn barrier(&self) {
        (**self).barrier()
    }
    fn exchange_until(
        &self,
        sends: &[Outgoing<'_>],
        deadline: std::time::Instant,
        mailbox: &mut dyn Mailbox,
    ) -> Result<(), CommError> {
        (**self).exchange_until(sends, deadline, mailbox)
    }
    fn quiesce(&self, mailbox: &mut dyn Mailbox) {
        (**self).quiesce(mailbox)
    }
    fn datagrams(&self) -> bool {
        (**self).datagrams()
    }
    fn rejected(&self) -> u64 {
        (**self).rejected()
    }
    fn host_losses(&self) -> u64 {
        (**self).host_losses()
    }
    fn abort(&self, code: i32) -> ! {
        (**self).abort(code)
    }
    fn ranks_on_host(&self) -> usize {
        (**self).ranks_on_host()
    }
    fn processor_name(&self) -> String {
        (**self).processor_name()
    }
    fn library_version(&self) -> String {
        (**self).library_version()
    }
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

/// Longest error message [`agree`] passes on, in bytes.
const MESSAGE_BYTES: usize = 1024;

/// Collective error agreement: every rank passes its local outcome and every rank learns
/// whether any rank failed, so a bad input stops all ranks together instead of leaving
/// the healthy ones waiting in the next collective. One byte per rank when all is well
/// (a thousand in-process ranks agree often); the messages travel only after a failure.
///
/// # Errors
/// If any rank failed: the lowest failing rank and its message, plus this rank's own
/// error where it has one.
pub fn agree<T, X>(t: &T, local: anyhow::Result<X>) -> Result<X, Disagreement>
where
    T: Transport + ?Sized,
{
    let flags = t.allgather_bytes(&[u8::from(local.is_err())]);
    let Some(rank) = flags.iter().position(|&f| f == 1) else {
        return Ok(local.unwrap_or_else(|e| unreachable!("own failure not gathered: {e:#}")));
    };
    let text = match &local {
        Err(e) => {
            let text = format!("{e:#}");
            let mut end = text.len().min(MESSAGE_BYTES);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_string()
        }
        Ok(_) => String::new(),
    };
    let messages = gather_strings(t, &text);
    Err(Disagreement {
        rank,
        message: messages.into_iter().nth(rank).unwrap_or_default(),
        own: local.err(),
    })
}

/// Every rank's `s`, in rank order. Collective.
pub fn gather_strings<T: Transport + ?Sized>(t: &T, s: &str) -> Vec<String> {
    let lens = t.allgather_bytes(&(s.len() as u64).to_le_bytes());
    let max = lens
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as usize)
        .max()
        .unwrap_or(0)
        .max(1);
    let mut mine = s.as_bytes().to_vec();
    mine.resize(max, 0);
    t.allgather_bytes(&mine)
        .chunks(max)
        .map(|c| {
            String::from_utf8_lossy(c)
                .trim_end_matches('\0')
                .to_string()
        })
        .collect()
}

/// What a rank of a launch is about to do, as it tells the others in [`handshake`].
#[derive(Debug, Clone, Copy)]
pub enum Intent<'a> {
    /// Run `command` (`train`, `bench-exchange`, `help`, …) with `args`, which every rank
    /// must have alike where `args` is `Some` (`None`: the command checks its own flags).
    Run {
        command: &'a str,
        args: Option<&'a str>,
    },
    /// Nothing: its command line is invalid (it prints why itself).
    Failed,
}

/// Why a launch was refused in [`handshake`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The rank that explains: the lowest failed rank (which prints its own error), or
    /// rank 0, with `message`.
    pub speaker: usize,
    pub message: Option<String>,
}

/// Bytes of each rank's record in [`handshake`]: state, command, hash of the arguments,
/// hash of the build.
const HANDSHAKE_SLOT: usize = 64;

/// The first collective of every MPI launch of rps: each rank says what it is about to
/// run, so ranks started with different subcommands or flags (`mpirun … : …`), or from
/// different builds, stop together with one message instead of meeting in mismatched
/// collectives, which hang or corrupt memory.
///
/// # Errors
/// A rank failed to parse its command line, or the ranks disagree.
pub fn handshake<T: Transport + ?Sized>(t: &T, intent: Intent<'_>) -> Result<(), Refusal> {
    let mut slot = [0u8; HANDSHAKE_SLOT];
    match intent {
        Intent::Failed => slot[0] = 1,
        Intent::Run { command, args } => {
            slot[0] = 2;
            let name = command.as_bytes();
            let n = name.len().min(39);
            slot[1..1 + n].copy_from_slice(&name[..n]);
            // Commands that compare their own flags (and build) say more precisely
            // what differs; the others are compared here, arguments and build.
            if let Some(a) = args {
                slot[40..48].copy_from_slice(&crate::hash::hash_bytes(a.as_bytes()).to_le_bytes());
                let build = crate::hash::hash_bytes(crate::build_id::identity().as_bytes());
                slot[48..56].copy_from_slice(&build.to_le_bytes());
            }
        }
    }
    let all = t.allgather_bytes(&slot);
    let slots: Vec<&[u8]> = all.chunks(HANDSHAKE_SLOT).collect();
    if let Some(speaker) = slots.iter().position(|s| s[0] == 1) {
        return Err(Refusal {
            speaker,
            message: None,
        });
    }
    if slots.iter().all(|s| *s == slots[0]) {
        return Ok(());
    }
    let command = |s: &[u8]| {
        String::from_utf8_lossy(&s[1..40])
            .trim_end_matches('\0')
            .to_string()
    };
    let groups = |key: &dyn Fn(&[u8]) -> String| {
        let mut g: Vec<(String, Vec<usize>)> = Vec::new();
        for (rank, s) in slots.iter().enumerate() {
            let k = key(s);
            match g.iter_mut().find(|x| x.0 == k) {
                Some(x) => x.1.push(rank),
                None => g.push((k, vec![rank])),
            }
        }
        g.iter()
            .map(|(k, ranks)| format!("{k} on rank(s) {}", list(ranks)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let message = if slots.iter().any(|s| s[1..40] != slots[0][1..40]) {
        format!(
            "the ranks of this launch run different commands: {}; every rank of an MPI job must run the same rps command with the same flags",
            groups(&|s| format!("`rps {}`", command(s)))
        )
    } else if slots.iter().any(|s| s[48..56] != slots[0][48..56]) {
        "the ranks of this launch run different builds of rps: start every rank from the same binary".to_string()
    } else {
        // Only the arguments differ: say how (every rank takes part in this gather, since
        // every rank saw the same slots).
        let text = match intent {
            Intent::Run { args: Some(a), .. } => a,
            _ => "",
        };
        let all = gather_strings(t, text);
        let mut g: Vec<(String, Vec<usize>)> = Vec::new();
        for (rank, a) in all.into_iter().enumerate() {
            match g.iter_mut().find(|x| x.0 == a) {
                Some(x) => x.1.push(rank),
                None => g.push((a, vec![rank])),
            }
        }
        let sides: Vec<String> = g
            .iter()
            .map(|(a, ranks)| format!("`{a}` on rank(s) {}", list(ranks)))
            .collect();
        format!(
            "the ranks of this launch run `rps {}` with different flags: {}; give every rank the same flags",
            command(slots[0]),
            sides.join(", ")
        )
    };
    Err(Refusal {
        speaker: 0,
        message: Some(message),
    })
}

/// Every distinct value of `values` (one per rank, in rank order) with the ranks that hold
/// it, `"{value} on rank(s) 0, 2"` as `describe` writes the value, in order of first
/// appearance: how an error says where ranks disagree.
pub fn ranks_by_value<T: PartialEq>(
    values: impl IntoIterator<Item = T>,
    describe: impl Fn(&T) -> String,
) -> Vec<String> {
    let mut groups: Vec<(T, Vec<usize>)> = Vec::new();
    for (rank, v) in values.into_iter().enumerate() {
        match groups.iter_mut().find(|g| g.0 == v) {
            Some(g) => g.1.push(rank),
            None => groups.push((v, vec![rank])),
        }
    }
    groups
        .iter()
        .map(|(v, ranks)| format!("{} on rank(s) {}", describe(v), list(ranks)))
        .collect()
}

/// `0, 1, 3`.
pub fn list(ranks: &[usize]) -> String {
    ranks
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
