//! The per-namespace lock file that makes one sald the owner of the plumbing.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::error::PlumbingError;

/// Takes the exclusive lock on `path`; `None` when another process holds
/// it.
///
/// The owner unlinks the file when it removes its plumbing (so lock files
/// of short-lived namespaces do not pile up in /run/serval). A contender
/// may have opened the old file just before the unlink and then lock an
/// orphaned inode, so after locking we check that `path` still names the
/// inode we hold, and start over if not.
pub(crate) fn acquire_lock(path: &Path) -> Result<Option<Flock<File>>, PlumbingError> {
    let run_err = |source| PlumbingError::RunDir {
        path: path.to_owned(),
        source,
    };
    for _ in 0..10 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(run_err)?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, errno)) => return Err(run_err(errno.into())),
        };
        let held = lock.metadata().map_err(run_err)?;
        match fs::metadata(path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(Some(lock)),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(run_err(e)),
        }
    }
    Err(run_err(io::Error::other(
        "lock file keeps being replaced; is another sald starting and stopping in a loop?",
    )))
}
