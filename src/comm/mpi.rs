//! [`Transport`] over MPI (rsmpi): the only module of rps that talks to `mpi`.
//!
//! Every exchange posts its nonblocking sends and receives inside one request scope and
//! completes them there, so no request outlives the step that made it. The reliable
//! collectives (reductions, gathers, barriers) are built here from point-to-point
//! messages on a duplicate of the world communicator, never from MPI's own collectives:
//! so their summation order is rps's ([`super::reduce`]), the same as the in-process
//! transport's whatever MPI library runs them, and a rank blocked in one knows which
//! peers it still waits for (the stall watchdog names them).

use std::cell::RefCell;

use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::request::multiple_scope;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::reduce::{chunk, chunks_mut, sum_in_rank_order, Summand, GATHER_WHOLE_BYTES};
use super::{watch, CommError, Incoming, Mailbox, Outgoing, Transport, POLL_SLEEP};

/// Tags of the collectives' messages (on their own communicator, so they never meet the
/// exchange's).
const TAG_GATHER: i32 = 1;
const TAG_SCATTER: i32 = 2;
const TAG_BARRIER: i32 = 3;

/// The MPI environment of this process. Dropping it finalises MPI.
pub struct MpiTransport {
    // Field order matters: the communicators must be dropped before the universe.
    /// The exchange's messages (and what deadline drains receive).
    world: SimpleCommunicator,
    /// The collectives' messages: a duplicate of `world`.
    coll: SimpleCommunicator,
    /// Receive buffers of the reductions, kept between calls (a model-sized reduction
    /// runs every step of the all-reduce baseline).
    scratch_f32: RefCell<Vec<f32>>,
    scratch_f64: RefCell<Vec<f64>>,
    /// Receive buffer of the polling paths (sized by each probed message).
    inbound: RefCell<Vec<f32>>,
    _universe: mpi::environment::Universe,
}

/// One message of [`MpiTransport::complete`]: peer, tag, data.
type Send<'a, T> = (usize, i32, &'a [T]);
type Recv<'a, T> = (usize, i32, &'a mut [T]);

impl MpiTransport {
    /// Initialises MPI. Returns `None` if MPI was already initialised.
    pub fn init() -> Option<Self> {
        let universe = mpi::initialize()?;
        let world = universe.world();
        let coll = world.duplicate();
        Some(MpiTransport {
            world,
            coll,
            scratch_f32: RefCell::new(Vec::new()),
            scratch_f64: RefCell::new(Vec::new()),
            inbound: RefCell::new(Vec::new()),
            _universe: universe,
        })
    }

    /// Posts `recvs` then `sends` on `comm` and completes all of them, keeping the stall
    /// watchdog told which peers are still missing (`what` names the operation). With
    /// `poll`, tests with short sleeps and calls it in between (it returns whether it
    /// made progress); else blocks in MPI_Waitany.
    ///
    /// # Errors
    /// A received message whose length differs from its buffer (after all requests are
    /// complete, as MPI requires).
    fn complete<T: Equivalence>(
        &self,
        comm: &SimpleCommunicator,
        what: &'static str,
        sends: &[Send<'_, T>],
        recvs: &mut [Recv<'_, T>],
        mut poll: Option<&mut dyn FnMut() -> bool>,
    ) -> Result<(), CommError> {
        let size = self.size();
        if let Some(bad) = sends
            .iter()
            .map(|s| s.0)
            .chain(recvs.iter().map(|r| r.0))
            .find(|&r| r >= size)
        {
            return Err(CommError::Rank(bad, size));
        }
        let me = self.rank();
        // Per request, in posting order: the peer and, for receives, (tag, length).
        let mut peers: Vec<(usize, Option<(i32, usize)>)> = recvs
            .iter()
            .map(|r| (r.0, Some((r.1, r.2.len()))))
            .chain(sends.iter().map(|s| (s.0, None)))
            .collect();
        let mut error = None;
        multiple_scope(peers.len(), |scope, requests| {
            for (from, tag, buf) in recvs.iter_mut() {
                let p = comm.process_at_rank(*from as i32);
                requests.add(p.immediate_receive_into_with_tag(scope, &mut buf[..], *tag));
            }
            for &(to, tag, data) in sends {
                let p = comm.process_at_rank(to as i32);
                requests.add(p.immediate_send_with_tag(scope, data, tag));
            }
            let mut done = vec![false; peers.len()];
            let mut finished = Vec::new();
            while requests.incomplete() > 0 {
                let mut missing: Vec<usize> = (0..peers.len())
                    .filter(|&i| !done[i])
                    .map(|i| peers[i].0)
                    .collect();
                missing.sort_unstable();
                missing.dedup();
                watch::set(
                    me,
                    watch::Waiting {
                        what,
                        peers: missing,
                    },
                );
                finished.clear();
                match poll.as_mut() {
                    None => finished.extend(requests.wait_any()),
                    Some(poll) => {
                        requests.test_some(&mut finished);
                        if finished.is_empty() && !poll() {
                            std::thread::sleep(POLL_SLEEP);
                        }
                    }
                }
                for &(i, status, _) in &finished {
                    done[i] = true;
                    if let Some((tag, expected)) = peers[i].1.take() {
                        let found = status.count(T::equivalent_datatype()).max(0) as usize;
                        if found != expected && error.is_none() {
                            error = Some(CommError::Length {
                                from: peers[i].0,
                                tag,
                                expected,
                                found,
                            });
                        }
                    }
                }
            }
        });
        watch::clear(me);
        error.map_or(Ok(()), Err)
    }

    /// Every rank sends `send(r)` to each other rank r and receives rank r's message
    /// into `recv[r]` (`recv[self]` is left alone), on the collectives' communicator:
    /// the one message pattern of every collective here.
    fn swap<'a, T: Equivalence + 'a>(
        &self,
        what: &'static str,
        tag: i32,
        send: impl Fn(usize) -> &'a [T],
        recv: Vec<&'a mut [T]>,
        poll: Option<&mut dyn FnMut() -> bool>,
    ) {
        let me = self.rank();
        let sends: Vec<Send<'_, T>> = (0..self.size())
            .filter(|&r| r != me)
            .map(|r| (r, tag, send(r)))
            .collect();
        let mut recvs: Vec<Recv<'_, T>> = recv
            .into_iter()
            .enumerate()
            .filter(|&(r, _)| r != me)
            .map(|(r, p)| (r, tag, p))
            .collect();
        self.complete(&self.coll, what, &sends, &mut recvs, poll)
            .expect("a collective's messages have the lengths every rank computes");
    }

    /// Every rank's `send` (the same length everywhere) into `recv`, in rank order.
    fn allgather<T: Equivalence + Copy>(&self, what: &'static str, send: &[T], recv: &mut [T]) {
        let mut parts = chunks_mut(recv, self.size());
        parts[self.rank()].copy_from_slice(send);
        self.swap(what, TAG_GATHER, |_| send, parts, None);
    }

    /// The sum over ranks of `buf`, in rank order ([`super::reduce`]), on every rank:
    /// small buffers gathered whole, large ones reduce-scattered then gathered.
    fn allreduce<T: Summand + Equivalence>(&self, buf: &mut [T], scratch: &mut Vec<T>) {
        const WHAT: &str = "a reduction";
        let (n, me, len) = (self.size(), self.rank(), buf.len());
        if n == 1 || len == 0 {
            return;
        }
        if len * std::mem::size_of::<T>() <= GATHER_WHOLE_BYTES {
            scratch.resize(n * len, T::default());
            self.allgather(WHAT, buf, scratch);
            sum_in_rank_order(scratch.chunks_exact(len), buf);
            return;
        }
        // Phase 1: every rank's piece of this rank's chunk, added in rank order.
        let mine = chunk(len, n, me);
        let ml = mine.len();
        scratch.resize(n * ml, T::default());
        let mut pieces = chunks_mut(&mut scratch[..], n);
        pieces[me].copy_from_slice(&buf[mine.clone()]);
        let whole: &[T] = buf;
        self.swap(
            WHAT,
            TAG_SCATTER,
            |r| &whole[chunk(len, n, r)],
            pieces,
            None,
        );
        sum_in_rank_order(
            (0..n).map(|r| &scratch[r * ml..(r + 1) * ml]),
            &mut buf[mine],
        );
        // Phase 2: every reduced chunk to every rank.
        let mut parts = chunks_mut(buf, n);
        let own: &[T] = std::mem::take(&mut parts[me]) as &[T];
        self.swap(WHAT, TAG_GATHER, |_| own, parts, None);
    }

    /// Every rank meets every other: an empty message to and from each peer. With
    /// `poll`, polls (see [`Self::complete`]).
    fn meet(&self, poll: Option<&mut dyn FnMut() -> bool>) {
        let mut bufs: Vec<[u8; 0]> = vec![[]; self.size()];
        let recv = bufs.iter_mut().map(|b| &mut b[..]).collect();
        self.swap("a barrier", TAG_BARRIER, |_| &[], recv, poll);
    }
}

impl MpiTransport {
    /// Receives every message already waiting, from any rank with any tag, and hands it
    /// to `mailbox` (late if `late` says so, else if `deadline` has passed). Returns
    /// whether anything arrived.
    fn drain(
        &self,
        mailbox: &mut dyn Mailbox,
        late: Option<bool>,
        deadline: std::time::Instant,
    ) -> bool {
        let mut buf = self.inbound.borrow_mut();
        let mut any = false;
        while let Some((msg, status)) = self.world.any_process().immediate_matched_probe() {
            let n = status.count(f32::equivalent_datatype()).max(0) as usize;
            buf.resize(n, 0.0);
            msg.matched_receive_into(&mut buf[..]);
            let late =
                late.unwrap_or_else(|| std::time::Instant::now() >= mailbox.deadline(deadline));
            mailbox.deliver(status.source_rank() as usize, status.tag(), &buf, 0, late);
            any = true;
        }
        any
    }
}

impl Transport for MpiTransport {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn exchange(
        &self,
        sends: &[Outgoing<'_>],
        recvs: &mut [Incoming<'_>],
    ) -> Result<(), CommError> {
        let sends: Vec<Send<'_, f32>> = sends.iter().map(|s| (s.to, s.tag, s.data)).collect();
        let mut recvs: Vec<Recv<'_, f32>> = recvs
            .iter_mut()
            .map(|r| (r.from, r.tag, &mut r.buf[..]))
            .collect();
        self.complete(&self.world, "the exchange", &sends, &mut recvs, None)
    }

    // The signature repeats the trait's (and local.rs's): the body is what differs.
    fn exchange_until(
        &self,
        sends: &[Outgoing<'_>],
        deadline: std::time::Instant,
        mailbox: &mut dyn Mailbox,
    ) -> Result<(), CommError> {
        let size = self.size();
        if let Some(bad) = sends.iter().map(|s| s.to).find(|&r| r >= size) {
            return Err(CommError::Rank(bad, size));
        }
        mpi::request::scope(|scope| {
            let mut pending: Vec<_> = sends
                .iter()
                .map(|s| {
                    self.world
                        .process_at_rank(s.to as i32)
                        .immediate_send_with_tag(scope, s.data, s.tag)
                })
                .collect();
            loop {
                let mut progressed = self.drain(mailbox, None, deadline);
                let before = pending.len();
                pending = pending.into_iter().filter_map(|r| r.test().err()).collect();
                progressed |= pending.len() != before;
                if pending.is_empty()
                    && (mailbox.complete()
                        || std::time::Instant::now() >= mailbox.deadline(deadline))
                {
                    break;
                }
                if !progressed {
                    std::thread::sleep(POLL_SLEEP);
                }
            }
        });
        Ok(())
    }

    fn quiesce(&self, mailbox: &mut dyn Mailbox) {
        let now = std::time::Instant::now();
        self.meet(Some(&mut || self.drain(mailbox, Some(true), now)));
        // Eager messages sent just before the barrier may still be landing.
        self.drain(mailbox, Some(true), now);
    }

    fn allreduce_sum_f32(&self, buf: &mut [f32]) {
        self.allreduce(buf, &mut self.scratch_f32.borrow_mut());
    }

    fn allreduce_sum_f64(&self, buf: &mut [f64]) {
        self.allreduce(buf, &mut self.scratch_f64.borrow_mut());
    }

    /// MPI_Allreduce itself, in the library's order: for `rps bench-exchange` only.
    fn allreduce_sum_f32_native(&self, send: &[f32], recv: &mut [f32]) {
        self.world
            .all_reduce_into(send, recv, SystemOperation::sum());
    }

    fn allgather_bytes(&self, send: &[u8]) -> Vec<u8> {
        let mut recv = vec![0u8; send.len() * self.size()];
        self.allgather("a gather", send, &mut recv);
        recv
    }

    fn gather_bytes(&self, send: &[u8]) -> Option<Vec<u8>> {
        let (n, me) = (self.size(), self.rank());
        if me != 0 {
            self.complete::<u8>(
                &self.coll,
                "a gather",
                &[(0, TAG_GATHER, send)],
                &mut [],
                None,
            )
            .expect("a send has no length to check");
            return None;
        }
        let mut recv = vec![0u8; send.len() * n];
        let mut parts = chunks_mut(&mut recv, n);
        parts[0].copy_from_slice(send);
        let mut recvs: Vec<Recv<'_, u8>> = parts
            .into_iter()
            .enumerate()
            .skip(1)
            .map(|(r, p)| (r, TAG_GATHER, p))
            .collect();
        self.complete(&self.coll, "a gather", &[], &mut recvs, None)
            .expect("a gather's messages have the length every rank gave");
        Some(recv)
    }

    fn barrier(&self) {
        self.meet(None);
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn processor_name(&self) -> String {
        mpi::environment::processor_name().unwrap_or_else(|_| "unknown".into())
    }

    fn library_version(&self) -> String {
        mpi::environment::library_version()
            .map(|v| {
                v.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                    .to_string()
            })
            .unwrap_or_else(|_| "unknown".into())
    }
}
