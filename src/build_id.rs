//! The identity of this build of rps: its version and a hash of its own executable, so
//! ranks started from two different builds of one version are told apart.

use std::sync::OnceLock;

/// `VERSION+HASH`, computed once per process (reading the executable takes milliseconds).
pub fn identity() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let exe = std::env::current_exe()
            .and_then(std::fs::read)
            .map(|bytes| format!("{:016x}", crate::hash::hash_bytes(&bytes)))
            .unwrap_or_else(|e| format!("(unreadable executable: {e})"));
        format!("{}+{exe}", env!("CARGO_PKG_VERSION"))
    })
}
