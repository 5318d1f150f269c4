//! An in-process [`Transport`]: n "ranks" as threads sharing mailboxes.
//!
//! Runs the RPS exchange and the training driver on several ranks without MPI (unit
//! tests, `rps train --local-ranks`). Semantics follow MPI's: messages between a pair with
//! the same tag arrive in order, collectives must be entered by every rank in the same
//! order. A rank that fails alone [`LocalTransport::poison`]s the network: every rank
//! waiting in it then unwinds with [`PeerFailed`] (MPI_Abort's counterpart).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use super::reduce::{sum_in_rank_order, Summand};
use super::{CommError, Incoming, Mailbox, Outgoing, Transport};

#[derive(Default)]
struct State {
    /// (from, to, tag) → queued payloads.
    mail: HashMap<(usize, usize, i32), VecDeque<Vec<f32>>>,
    /// Contributions to the collective in progress, indexed by rank.
    contributions: Vec<Option<Data>>,
    /// Result of the last completed collective, and how many ranks still have to read it.
    result: Option<(Arc<Data>, usize)>,
    generation: u64,
}

/// One rank's contribution to a collective, or its result, in its own type.
#[derive(Debug, Clone)]
enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<u8>),
}

/// The element-wise sum of every rank's vector, in rank order ([`sum_in_rank_order`]);
/// `get` picks the vector of the expected type out of a contribution.
fn sum_all<T: Summand>(all: &[Data], get: impl Fn(&Data) -> Option<&[T]>) -> Vec<T> {
    let parts: Vec<&[T]> = all.iter().filter_map(get).collect();
    let mut out = vec![T::default(); parts.first().map_or(0, |p| p.len())];
    sum_in_rank_order(parts.into_iter(), &mut out);
    out
}

struct Shared {
    size: usize,
    state: Mutex<State>,
    wake: Condvar,
    /// Raised by [`LocalTransport::poison`]: a rank failed where the others cannot learn it.
    failed: AtomicBool,
}

/// The payload a rank unwinds with when a peer poisoned the network (no panic message
/// is printed: see [`std::panic::resume_unwind`]).
#[derive(Debug)]
pub struct PeerFailed;

impl Shared {
    /// The state, whatever another rank's unwinding did to the lock.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.check();
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a change (at most `timeout`), unwinding if the network was poisoned.
    fn wait<'a>(
        &self,
        guard: MutexGuard<'a, State>,
        timeout: Option<std::time::Duration>,
    ) -> MutexGuard<'a, State> {
        self.check();
        let guard = match timeout {
            None => self
                .wake
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner),
            Some(t) => {
                self.wake
                    .wait_timeout(guard, t)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
        self.check();
        guard
    }

    fn check(&self) {
        if self.failed.load(Ordering::SeqCst) {
            std::panic::resume_unwind(Box::new(PeerFailed));
        }
    }
}

/// One rank's handle on an in-process network.
pub struct LocalTransport {
    rank: usize,
    shared: Arc<Shared>,
}

impl LocalTransport {
    /// Creates a network of `size` ranks; hand one handle to each thread.
    pub fn network(size: usize) -> Vec<LocalTransport> {
        let shared = Arc::new(Shared {
            size,
            state: Mutex::new(State {
                contributions: vec![None; size],
                ..State::default()
            }),
            wake: Condvar::new(),
            failed: AtomicBool::new(false),
        });
        (0..size)
            .map(|rank| LocalTransport {
                rank,
                shared: Arc::clone(&shared),
            })
            .collect()
    }

    /// Marks the network failed and wakes every rank waiting in it, which then unwinds
    /// with [`PeerFailed`]; used when this rank fails where the others cannot learn it.
    pub fn poison(&self) {
        let _st = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.shared.failed.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
    }

    /// Every rank contributes a vector; the last to arrive combines all of them (in rank
    /// order) once, and every rank receives the one result. The building block of all
    /// collectives here: with 64 ranks, combining once instead of on every rank is what
    /// keeps an all-reduce of the model cheap.
    fn collective(&self, mine: Data, combine: fn(&[Data]) -> Data) -> Arc<Data> {
        let sh = &self.shared;
        let mut st = sh.lock();
        // Wait until the previous collective's result has been read by everyone.
        while st.result.is_some() {
            st = sh.wait(st, None);
        }
        st.contributions[self.rank] = Some(mine);
        let generation = st.generation;
        if st.contributions.iter().all(Option::is_some) {
            let all: Vec<Data> = st
                .contributions
                .iter_mut()
                .filter_map(Option::take)
                .collect();
            st.result = Some((Arc::new(combine(&all)), sh.size));
            st.generation += 1;
            sh.wake.notify_all();
        }
        while st.generation == generation {
            // For the stall watchdog: the ranks that have not arrived yet.
            let missing = (0..sh.size)
                .filter(|&r| st.contributions[r].is_none())
                .collect();
            super::watch::set(
                self.rank,
                super::watch::Waiting {
                    what: "a collective",
                    peers: missing,
                },
            );
            st = sh.wait(st, None);
        }
        super::watch::clear(self.rank);
        let (result, readers) = st.result.as_mut().expect("collective result present");
        let out = Arc::clone(result);
        *readers -= 1;
        if *readers == 0 {
            st.result = None;
            sh.wake.notify_all();
        }
        out
    }
}

impl LocalTransport {
    /// Delivers `sends` to their mailboxes (in-process sends complete at once) and
    /// returns the locked state for the receiving part.
    fn post(&self, sends: &[Outgoing<'_>]) -> Result<MutexGuard<'_, State>, CommError> {
        let sh = &self.shared;
        let mut st = sh.lock();
        for s in sends {
            if s.to >= sh.size {
                return Err(CommError::Rank(s.to, sh.size));
            }
            st.mail
                .entry((self.rank, s.to, s.tag))
                .or_default()
                .push_back(s.data.to_vec());
        }
        sh.wake.notify_all();
        Ok(st)
    }
}

impl Transport for LocalTransport {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn exchange(
        &self,
        sends: &[Outgoing<'_>],
        recvs: &mut [Incoming<'_>],
    ) -> Result<(), CommError> {
        let sh = &self.shared;
        let mut st = self.post(sends)?;
        for r in recvs.iter_mut() {
            let key = (r.from, self.rank, r.tag);
            super::watch::set(
                self.rank,
                super::watch::Waiting {
                    what: "the exchange",
                    peers: vec![r.from],
                },
            );
            let msg = loop {
                if let Some(m) = pop(&mut st.mail, key) {
                    break m;
                }
                st = sh.wait(st, None);
            };
            if msg.len() != r.buf.len() {
                return Err(CommError::Length {
                    from: r.from,
                    tag: r.tag,
                    expected: r.buf.len(),
                    found: msg.len(),
                });
            }
            r.buf.copy_from_slice(&msg);
        }
        super::watch::clear(self.rank);
        Ok(())
    }

    fn exchange_until(
        &self,
        sends: &[Outgoing<'_>],
        deadline: std::time::Instant,
        mailbox: &mut dyn Mailbox,
    ) -> Result<(), CommError> {
        let sh = &self.shared;
        let mut st = self.post(sends)?;
        loop {
            let late = std::time::Instant::now() >= mailbox.deadline(deadline);
            for (from, tag, data) in take_mine(&mut st, self.rank) {
                mailbox.deliver(from, tag, &data, 0, late);
            }
            let now = std::time::Instant::now();
            let deadline = mailbox.deadline(deadline);
            if mailbox.complete() || now >= deadline {
                return Ok(());
            }
            st = sh.wait(st, Some(deadline - now));
        }
    }

    fn quiesce(&self, mailbox: &mut dyn Mailbox) {
        // In-process sends land at once: after everyone passed the barrier, all are here.
        self.barrier();
        let mut st = self.shared.lock();
        for (from, tag, data) in take_mine(&mut st, self.rank) {
            mailbox.deliver(from, tag, &data, 0, true);
        }
    }

    fn allreduce_sum_f32(&self, buf: &mut [f32]) {
        let sum = self.collective(Data::F32(buf.to_vec()), |all| {
            Data::F32(sum_all(all, |d| match d {
                Data::F32(v) => Some(&v[..]),
                _ => None,
            }))
        });
        if let Data::F32(sum) = &*sum {
            buf.copy_from_slice(sum);
        }
    }

    fn allreduce_sum_f64(&self, buf: &mut [f64]) {
        let sum = self.collective(Data::F64(buf.to_vec()), |all| {
            Data::F64(sum_all(all, |d| match d {
                Data::F64(v) => Some(&v[..]),
                _ => None,
            }))
        });
        if let Data::F64(sum) = &*sum {
            buf.copy_from_slice(sum);
        }
    }

    fn allgather_bytes(&self, send: &[u8]) -> Vec<u8> {
        let all = self.collective(Data::Bytes(send.to_vec()), concat_bytes);
        match &*all {
            Data::Bytes(b) => b.clone(),
            _ => Vec::new(),
        }
    }

    fn gather_bytes(&self, send: &[u8]) -> Option<Vec<u8>> {
        // The concatenation is built once and shared; only rank 0 copies it out.
        let all = self.collective(Data::Bytes(send.to_vec()), concat_bytes);
        match (&*all, self.rank) {
            (Data::Bytes(b), 0) => Some(b.clone()),
            _ => None,
        }
    }

    fn barrier(&self) {
        self.collective(Data::Bytes(Vec::new()), |_| Data::Bytes(Vec::new()));
    }

    fn abort(&self, code: i32) -> ! {
        log::debug!("rank {} aborts the local network (code {code})", self.rank);
        self.poison();
        std::panic::resume_unwind(Box::new(PeerFailed))
    }

    /// Every in-process rank lives in this one process.
    fn ranks_on_host(&self) -> usize {
        self.shared.size
    }

    fn processor_name(&self) -> String {
        "local".into()
    }

    fn library_version(&self) -> String {
        "in-process".into()
    }
}

/// The oldest message queued under `key`; an emptied queue is removed, since tags
/// carry the step and a map that kept every (sender, receiver, tag) ever used would
/// grow by ranks² entries a step.
fn pop(
    mail: &mut HashMap<(usize, usize, i32), VecDeque<Vec<f32>>>,
    key: (usize, usize, i32),
) -> Option<Vec<f32>> {
    let queue = mail.get_mut(&key)?;
    let m = queue.pop_front();
    if queue.is_empty() {
        mail.remove(&key);
    }
    m
}

/// Every rank's bytes, in rank order.
fn concat_bytes(all: &[Data]) -> Data {
    Data::Bytes(
        all.iter()
            .flat_map(|d| match d {
                Data::Bytes(b) => &b[..],
                _ => &[],
            })
            .copied()
            .collect(),
    )
}

/// Removes and returns every message addressed to `rank`, oldest first per sender.
fn take_mine(st: &mut State, rank: usize) -> Vec<(usize, i32, Vec<f32>)> {
    let mut keys: Vec<_> = st.mail.keys().filter(|k| k.1 == rank).copied().collect();
    keys.sort_unstable();
    let mut out = Vec::new();
    for k in keys {
        if let Some(q) = st.mail.remove(&k) {
            out.extend(q.into_iter().map(|m| (k.0, k.2, m)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Received messages leave nothing behind: tags carry the step, so a map that kept
    /// every (sender, receiver, tag) grew by ranks² entries a step (1,024 in-process ranks
    /// ran out of memory).
    #[test]
    fn received_messages_leave_no_trace() {
        let net = LocalTransport::network(2);
        let shared = Arc::clone(&net[0].shared);
        std::thread::scope(|s| {
            for t in &net {
                s.spawn(move || {
                    let peer = 1 - t.rank();
                    for tag in 0..100 {
                        let data = [tag as f32];
                        let mut buf = [0f32];
                        let sends = [Outgoing {
                            to: peer,
                            tag,
                            data: &data,
                            framing: None,
                        }];
                        let mut recvs = [Incoming {
                            from: peer,
                            tag,
                            buf: &mut buf,
                        }];
                        t.exchange(&sends, &mut recvs).unwrap();
                        assert_eq!(buf[0], tag as f32);
                    }
                });
            }
        });
        assert!(shared.lock().mail.is_empty());
    }

    #[test]
    fn exchange_and_collectives() {
        let handles: Vec<_> = LocalTransport::network(3)
            .into_iter()
            .map(|t| {
                std::thread::spawn(move || {
                    let r = t.rank();
                    let next = (r + 1) % 3;
                    let prev = (r + 2) % 3;
                    let data = [r as f32; 4];
                    let mut buf = [0f32; 4];
                    t.exchange(
                        &[Outgoing {
                            to: next,
                            tag: 7,
                            data: &data,
                            framing: None,
                        }],
                        &mut [Incoming {
                            from: prev,
                            tag: 7,
                            buf: &mut buf,
                        }],
                    )
                    .unwrap();
                    assert_eq!(buf, [prev as f32; 4]);
                    let mut v = [1.0f64, r as f64];
                    t.allreduce_sum_f64(&mut v);
                    assert_eq!(v, [3.0, 3.0]);
                    let g = t.allgather_bytes(&[r as u8, 9]);
                    assert_eq!(g, vec![0, 9, 1, 9, 2, 9]);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
