//! What each rank of this process is waiting for, so the stall watchdog can say which
//! peer a stuck rank waits on. The transports record it before they block and clear it
//! after; reading it costs nothing on the hot path but a lock on a tiny map.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// What a rank blocks on: messages from (or sends completing to) some peers, in the
/// exchange or in a collective (every collective is built from point-to-point messages,
/// so a rank always knows whom it still waits for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The operation, in words: "the exchange", "a reduction", "a barrier", …
    pub what: &'static str,
    /// The peers whose messages (or whose receipt of ours) are still missing.
    pub peers: Vec<usize>,
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
    map().get(&rank).map(|w| {
        let list: Vec<String> = w.peers.iter().map(|p| p.to_string()).collect();
        format!("waiting for rank(s) {} in {}", list.join(", "), w.what)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_clears() {
        set(
            1001,
            Waiting {
                what: "a reduction",
                peers: vec![3, 4],
            },
        );
        assert_eq!(
            describe(1001).as_deref(),
            Some("waiting for rank(s) 3, 4 in a reduction")
        );
        clear(1001);
        assert_eq!(describe(1001), None);
    }
}
