//! Index checkpoints: a committed version's whole index written beside the commit log, so that
//! opening the tree reads it instead of rescanning the segments. The writer checkpoints every
//! `checkpoint_bytes` of new records on a thread of its own (encoding and writing a large index
//! takes a while, and the version it describes is immutable), and in the foreground on close
//! and after compaction. One checkpoint is written at a time; a failure is reported by the next
//! checkpoint call or by close.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::codec::{self, FileHeader};
use crate::error::{Error, Result};
use crate::state::VersionState;

/// One checkpoint to write: the version's state and where.
pub(crate) struct Job {
    /// The committed version to describe.
    pub state: Arc<VersionState>,
    /// The checkpoint file's header.
    pub header: FileHeader,
    /// The checkpoint file.
    pub path: PathBuf,
    /// Write it durably (fsync'd temporary file, rename, directory fsync).
    pub durable: bool,
}

impl Job {
    /// Encodes and writes the checkpoint (replacing the file atomically).
    pub fn write(self) -> Result<()> {
        let ck = codec::Checkpoint {
            version: self.state.version,
            tokens: self.state.tokens,
            hwms: self.state.hwms.clone(),
            entries: self.state.levels.iter().map(|l| l.to_vec()).collect(),
        };
        let (header, body) = (self.header.encode(), ck.encode_body());
        if self.durable {
            metarep_core::fsutil::atomic_write_parts(&self.path, &[&header, &body])?;
        } else {
            // No fsync (it would flush every dirty segment page with it on ext4): a checkpoint
            // lost or torn by power loss fails its checksum and open rescans instead.
            let tmp = self.path.with_extension("ckpt.tmp");
            let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            f.write_all(&header)
                .and_then(|()| f.write_all(&body))
                .map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        }
        Ok(())
    }
}

/// The checkpoint thread (at most one checkpoint in flight).
#[derive(Default)]
pub(crate) struct Checkpointer {
    running: Option<JoinHandle<Result<()>>>,
}

impl Checkpointer {
    /// Starts writing `job` in the background, after the previous checkpoint has finished;
    /// fails with the previous one's failure, if any.
    pub fn start(&mut self, job: Job) -> Result<()> {
        self.wait()?;
        let handle = std::thread::Builder::new()
            .name("gist-checkpoint".into())
            .spawn(move || job.write())
            .map_err(|e| Error::Invalid(format!("cannot start the checkpoint thread: {e}")))?;
        self.running = Some(handle);
        Ok(())
    }

    /// Waits for the checkpoint in flight, if any; its outcome.
    pub fn wait(&mut self) -> Result<()> {
        match self.running.take() {
            None => Ok(()),
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(Error::Invalid("the checkpoint thread panicked".into()))),
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Best effort: a missing checkpoint only costs a rescan at the next open.
        let _ = self.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(path: PathBuf) -> Job {
        Job {
            state: Arc::new(VersionState::default()),
            header: FileHeader {
                magic: codec::CHECKPOINT_MAGIC,
                tree_id: 1,
                tag: 0,
                seq: 1,
                format: crate::config::FORMAT_VERSION,
            },
            path,
            durable: false,
        }
    }

    #[test]
    fn a_background_checkpoint_is_written_and_a_failed_one_is_reported_once_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpointer::default();
        let path = dir.path().join("index.ckpt");
        c.start(job(path.clone())).unwrap();
        c.wait().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let body = codec::Checkpoint::decode_body(&bytes[codec::HEADER_LEN..]).unwrap();
        assert_eq!((body.version, body.tokens), (0, 0));
        // Into a directory that does not exist: the start succeeds, the wait names the file.
        c.start(job(dir.path().join("gone").join("index.ckpt")))
            .unwrap();
        let e = c.wait().unwrap_err().to_string();
        assert!(e.contains("gone"), "{e}");
        assert!(c.wait().is_ok(), "reported once");
    }
}
