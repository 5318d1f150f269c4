//! Which messages and packets of a step are posted: the drop model asked for each, by
//! sender and receiver alike (oracle detection), with the links' counters. Methods of
//! [`Exchange`], written beside it.

use super::Exchange;
use crate::counters::StepCounters;
use crate::drop::{Direction, MessageId};
use crate::exchange::layout::Mode;

impl Exchange {
    /// Fills `mask` with the delivery decision of every packet of one message;
    /// `attempted[k] == false` marks packets that are not sent at all.
    pub(super) fn decide(&self, id: MessageId, attempted: Option<&[bool]>, mask: &mut Vec<bool>) {
        let n = self.packets(self.layout.block(id.block).len());
        mask.clear();
        mask.extend((0..n).map(|k| {
            attempted.is_none_or(|a| a[k])
                && !self.drop.drops(&MessageId {
                    packet: k as u32,
                    ..id
                })
        }));
    }

    /// Which packets of `block` the server has a value for at `step` (at least one copy
    /// arrived, or its own when co-located).
    pub(super) fn availability(&self, step: u64, block: usize, out: &mut Vec<bool>) {
        let server = self.owners[block];
        let n = self.packets(self.layout.block(block).len());
        out.clear();
        out.resize(n, self.layout.mode() == Mode::Colocated);
        if self.layout.mode() == Mode::Colocated {
            return;
        }
        let mut mask = Vec::with_capacity(n);
        for w in self.layout.workers() {
            self.decide(
                MessageId::new(step, Direction::Up, w, server, block),
                None,
                &mut mask,
            );
            out.iter_mut().zip(&mask).for_each(|(a, &m)| *a |= m);
        }
    }

    /// Uplink decisions of worker `me`: counts every message and returns the ones to
    /// post as (server, block, packet mask).
    pub(super) fn uplink_decisions(
        &mut self,
        step: u64,
        me: usize,
        counts: &mut StepCounters,
    ) -> Vec<(usize, usize, Vec<bool>)> {
        let mut out = Vec::new();
        if !self.layout.is_worker(me) {
            return out;
        }
        let mut mask = Vec::new();
        for (b, &server) in self.owners.iter().enumerate() {
            if server == me {
                continue; // a co-located server's own block never crosses the network
            }
            self.decide(
                MessageId::new(step, Direction::Up, me, server, b),
                None,
                &mut mask,
            );
            let delivered = mask.iter().filter(|&&m| m).count();
            counts.packets_up += mask.len() as u64;
            counts.packets_dropped_up += (mask.len() - delivered) as u64;
            if delivered == 0 {
                counts.dropped_up += 1;
                self.up_links.dropped[server] += 1;
            } else {
                counts.sent_up += 1;
                self.up_links.sent[server] += 1;
                counts.bytes_sent +=
                    4 * self.delivered_elems(&mask, self.layout.block(b).len()) as u64;
                out.push((server, b, mask.clone()));
            }
        }
        out
    }

    /// Downlink decisions of the server of `served`: counts every reply and returns the
    /// ones to post as (worker, packet mask). A server with nothing sends nothing.
    pub(super) fn downlink_decisions(
        &mut self,
        step: u64,
        me: usize,
        served: Option<usize>,
        counts: &mut StepCounters,
    ) -> Vec<(usize, Vec<bool>)> {
        let mut out = Vec::new();
        let Some(b) = served else {
            return out;
        };
        let attempted = self.available.iter().filter(|&&a| a).count();
        if attempted == 0 {
            return out;
        }
        let mut mask = Vec::new();
        for w in self.layout.workers().filter(|&w| w != me) {
            self.decide(
                MessageId::new(step, Direction::Down, me, w, b),
                Some(&self.available),
                &mut mask,
            );
            let delivered = mask.iter().filter(|&&m| m).count();
            counts.packets_down += attempted as u64;
            counts.packets_dropped_down += (attempted - delivered) as u64;
            if delivered == 0 {
                counts.dropped_down += 1;
                self.down_links.dropped[w] += 1;
            } else {
                counts.sent_down += 1;
                self.down_links.sent[w] += 1;
                counts.bytes_sent +=
                    4 * self.delivered_elems(&mask, self.layout.block(b).len()) as u64;
                out.push((w, mask.clone()));
            }
        }
        out
    }

    /// Elements carried by the delivered packets of a block of `len` elements.
    pub(super) fn delivered_elems(&self, mask: &[bool], len: usize) -> usize {
        mask.iter()
            .enumerate()
            .filter(|(_, &m)| m)
            .map(|(k, _)| self.packet_range(k, len).len())
            .sum()
    }
}
