//! What each rank of this process is waiting for, so the stall watchdog can say which
//! peer a stuck rank waits on. The transports record it before they block and clear it
//! after; reading it costs nothing on the hot path but a lock on a tiny map.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// What a rank blocks on: a point-to-point exchange with some peers, or a collective.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// Messages from (or a send completing to) these ranks.
    Peers(Vec<usize>),
    /// A collective every rank must enter.
    Collective(&'static str),
}

static WAITING: Mutex<BTreeMap<usize, Waiting>> = Mutex::new(BTreeMap::new());

fn map() -> std::sync::MutexGuard<'static, BTreeMap<usize, Waiting>> {
    WAITING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Rank `rank` is about to block on `what`.
pub fn set(rank: usize, what: Waiting) {
    map().insert(rank, what);
}

/// Rank `rank` is no longer blocked.
pub fn clear(rank: usize) {
    map().remove(&rank);
}

/// What rank `rank` waits for now, in words (`None` when it is not blocked).
pub fn describe(rank: usize) -> Option<String> {
    map().get(&rank).map(|w| match w {
        Waiting::Peers(peers) => {
            let list: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
            format!("waiting for rank(s) {} in the exchange", list.join(", "))
        }
        Waiting::Collective(what) => format!("waiting in {what} (a collective of all ranks)"),
    })
}

/// Runs `f` with rank `rank` marked as waiting in the collective `what`.
pub fn in_collective<R>(rank: usize, what: &'static str, f: impl FnOnce() -> R) -> R {
    set(rank, Waiting::Collective(what));
    let r = f();
    clear(rank);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_clears() {
        set(1001, Waiting::Peers(vec![3, 4]));
        assert_eq!(
            describe(1001).as_deref(),
            Some("waiting for rank(s) 3, 4 in the exchange")
        );
        in_collective(1001, "a reduction", || {
            assert!(describe(1001).unwrap().contains("a reduction"));
        });
        assert_eq!(describe(1001), None);
    }
}
