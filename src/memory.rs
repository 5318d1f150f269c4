//! What this host can still hold: the memory the kernel says can be allocated without
//! swapping (`MemAvailable`), read by every check that refuses a job before allocating
//! for it, so that an impossible size is a message rather than an aborted process.

/// `MemAvailable` of /proc/meminfo, in bytes (`None` where it cannot be read, and then
/// no check refuses anything).
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `bytes` in GiB, for messages.
pub fn gib(bytes: u128) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_host_has_some_memory() {
        let m = super::available().expect("/proc/meminfo has MemAvailable");
        assert!(m > 1 << 20, "{m}");
        assert_eq!(super::gib(3 << 30), 3.0);
    }
}
