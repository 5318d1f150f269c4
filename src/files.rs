//! Files that must survive crashes and other jobs: an exclusive lock that names its
//! holder ([`Lock`]), and atomic publication of a finished file ([`publish_copy`],
//! [`publish_rename`]): written beside its final name, synced, then renamed over it, so a
//! reader (or a crash) only ever sees the old complete file or the new complete one.
//! Also one notion of "the same file" ([`same_file_key`]) for every command that must
//! not write over its inputs or count a file twice.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// An exclusive advisory lock (`flock`) on a lock file, held until dropped. The kernel
/// releases it when the process dies, so a crashed job never leaves a stale lock; the
/// file itself says who holds it.
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock at `path` (created if needed) without waiting. `what` names the
    /// protected thing in the error, e.g. `--metrics runs/a.h5`.
    ///
    /// # Errors
    /// The lock is held by another process (named by its pid and host, where known), or
    /// the lock file cannot be created.
    pub fn acquire(path: &Path, what: &str) -> Result<Lock> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("{what}: cannot create the lock file {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "another process"
            } else {
                holder
            };
            bail!("{what} is in use by another job ({holder}); wait for it to end or choose another path");
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "pid {} on {}", std::process::id(), host.trim())?;
        file.flush()?;
        Ok(Lock {
            file,
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Remove the file while still holding the lock, so nobody takes a lock on a file
        // that is about to disappear.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.flush();
    }
}

/// `dir/.NAME.SUFFIX`: a hidden sibling of `path`.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{suffix}"))
}

/// Publishes a copy of `from` as `to`: copied to a temporary sibling, synced, renamed.
///
/// # Errors
/// The copy, the sync or the rename failed (the previous `to` is then untouched).
pub fn publish_copy(from: &Path, to: &Path) -> Result<()> {
    let tmp = sibling(to, &format!("tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        std::fs::copy(from, &tmp)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, to)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot publish {} as {}", from.display(), to.display()))
}

/// Publishes `from` as `to` by renaming it, after syncing it.
///
/// # Errors
/// The sync or the rename failed.
pub fn publish_rename(from: &Path, to: &Path) -> Result<()> {
    File::open(from)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(from, to))
        .with_context(|| format!("cannot publish {} as {}", from.display(), to.display()))
}

/// A path as the file system resolves it (symbolic links and `..` in existing parents
/// followed), so two spellings of one file compare equal; a path that does not exist yet
/// is resolved through its parent directory.
pub fn same_file_key(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (
        abs.parent().and_then(|d| d.canonicalize().ok()),
        abs.file_name(),
    ) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => abs,
    }
}

/// The first path of `paths` that names the same file as an earlier one: `(earlier,
/// later)` indices.
pub fn first_repeat(paths: &[PathBuf]) -> Option<(usize, usize)> {
    let keys: Vec<PathBuf> = paths.iter().map(|p| same_file_key(p)).collect();
    (1..keys.len()).find_map(|j| keys[..j].iter().position(|k| *k == keys[j]).map(|i| (i, j)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_exclusive_names_its_holder_and_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".x.lock");
        let held = Lock::acquire(&path, "--metrics x").unwrap();
        let err = Lock::acquire(&path, "--metrics x").unwrap_err().to_string();
        assert!(
            err.contains("--metrics x is in use by another job"),
            "{err}"
        );
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        assert!(!path.exists());
        Lock::acquire(&path, "--metrics x").unwrap();
    }

    #[test]
    fn two_spellings_of_one_file_are_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.h5");
        std::fs::write(&a, "x").unwrap();
        let name = dir.path().file_name().unwrap();
        let other = dir.path().join("..").join(name).join("./a.h5");
        let absent = dir.path().join("..").join(name).join("b.h5");
        let paths = vec![absent.clone(), a.clone(), dir.path().join("b.h5"), other];
        assert_eq!(first_repeat(&paths), Some((0, 2)));
        assert_eq!(first_repeat(&paths[1..]), Some((0, 2)));
        assert_eq!(first_repeat(&paths[..2]), None);
    }

    #[test]
    fn publishing_replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "new").unwrap();
        std::fs::write(&b, "old").unwrap();
        publish_copy(&a, &b).unwrap();
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "new");
        assert!(a.exists());
        std::fs::write(&a, "newer").unwrap();
        publish_rename(&a, &b).unwrap();
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "newer");
        assert!(!a.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
