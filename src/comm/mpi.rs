//! [`Transport`] over MPI (rsmpi): the only module of rps that talks to `mpi`.
//!
//! Every exchange posts its nonblocking sends and receives inside one
//! `mpi::request::scope` and completes them there, so no request outlives the step that
//! made it.

use std::cell::RefCell;

use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::{watch, CommError, Incoming, Mailbox, Outgoing, Transport, POLL_SLEEP};

/// The MPI environment of this process. Dropping it finalises MPI.
pub struct MpiTransport {
    // Field order matters: the communicator must be dropped before the universe.
    world: SimpleCommunicator,
    /// Copy of an in-place reduction's input (MPI forbids aliasing send and receive
    /// buffers); kept between calls to avoid re-allocating the model size every step.
    scratch: RefCell<Vec<f32>>,
    /// Receive buffer of the polling paths (sized by each probed message).
    inbound: RefCell<Vec<f32>>,
    _universe: mpi::environment::Universe,
}

impl MpiTransport {
    /// Initialises MPI. Returns `None` if MPI was already initialised.
    pub fn init() -> Option<Self> {
        let universe = mpi::initialize()?;
        let world = universe.world();
        Some(MpiTransport {
            world,
            scratch: RefCell::new(Vec::new()),
            inbound: RefCell::new(Vec::new()),
            _universe: universe,
        })
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
        let size = self.size();
        if let Some(bad) = sends
            .iter()
            .map(|s| s.to)
            .chain(recvs.iter().map(|r| r.from))
            .find(|&r| r >= size)
        {
            return Err(CommError::Rank(bad, size));
        }
        let expected: Vec<(usize, i32, usize)> =
            recvs.iter().map(|r| (r.from, r.tag, r.buf.len())).collect();
        let statuses = mpi::request::scope(|scope| {
            let mut requests = Vec::with_capacity(sends.len() + recvs.len());
            for r in recvs.iter_mut() {
                requests.push(
                    self.world
                        .process_at_rank(r.from as i32)
                        .immediate_receive_into_with_tag(scope, &mut r.buf[..], r.tag),
                );
            }
            let receives = requests.len();
            for s in sends {
                requests.push(
                    self.world
                        .process_at_rank(s.to as i32)
                        .immediate_send_with_tag(scope, s.data, s.tag),
                );
            }
            let mut statuses = Vec::with_capacity(receives);
            let me = self.rank();
            for (i, req) in requests.into_iter().enumerate() {
                // For the stall watchdog: the peers this rank still waits on.
                let peers = match i < receives {
                    true => expected[i..].iter().map(|e| e.0).collect(),
                    false => sends[i - receives..].iter().map(|s| s.to).collect(),
                };
                watch::set(me, watch::Waiting::Peers(peers));
                let status = req.wait();
                if i < receives {
                    statuses.push(status);
                }
            }
            watch::clear(me);
            statuses
        });
        for (status, (from, tag, len)) in statuses.iter().zip(expected) {
            let found = status.count(f32::equivalent_datatype()) as usize;
            if found != len {
                return Err(CommError::Length {
                    from,
                    tag,
                    expected: len,
                    found,
                });
            }
        }
        Ok(())
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
        let mut barrier = Some(self.world.immediate_barrier());
        let now = std::time::Instant::now();
        while let Some(b) = barrier.take() {
            let progressed = self.drain(mailbox, Some(true), now);
            match b.test() {
                Ok(_) => {}
                Err(b) => {
                    barrier = Some(b);
                    if !progressed {
                        std::thread::sleep(POLL_SLEEP);
                    }
                }
            }
        }
        // Eager messages sent just before the barrier may still be landing.
        self.drain(mailbox, Some(true), now);
    }

    fn allreduce_sum_f32(&self, buf: &mut [f32]) {
        let mut scratch = self.scratch.borrow_mut();
        scratch.clear();
        scratch.extend_from_slice(buf);
        watch::in_collective(self.rank(), "a reduction", || {
            self.world
                .all_reduce_into(&scratch[..], buf, SystemOperation::sum())
        });
    }

    fn allreduce_sum_f32_into(&self, send: &[f32], recv: &mut [f32]) {
        watch::in_collective(self.rank(), "a reduction", || {
            self.world
                .all_reduce_into(send, recv, SystemOperation::sum())
        });
    }

    fn allreduce_sum_f64(&self, buf: &mut [f64]) {
        let send = buf.to_vec();
        watch::in_collective(self.rank(), "a reduction", || {
            self.world
                .all_reduce_into(&send[..], buf, SystemOperation::sum())
        });
    }

    fn allgather_bytes(&self, send: &[u8]) -> Vec<u8> {
        let mut recv = vec![0u8; send.len() * self.size()];
        watch::in_collective(self.rank(), "a gather", || {
            self.world.all_gather_into(send, &mut recv[..])
        });
        recv
    }

    fn barrier(&self) {
        watch::in_collective(self.rank(), "a barrier", || self.world.barrier());
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
