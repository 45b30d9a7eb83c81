//! A segment appender's write thread: framed records are checksummed and written to their file
//! in the background, in order, while the writer encodes the next ones.
//!
//! The appender hands over a full buffer with the offsets of the frames in it and gets an
//! emptied one back (two take turns, so memory stays at two buffers). [`BackgroundWrites::wait`]
//! returns once everything handed over is in the file, with the first failure if any; a commit
//! waits before it publishes or syncs anything, so durability and the commit protocol are those
//! of writing in the foreground. Each buffer is written at its own offset, so the appender may
//! write a later buffer itself while earlier ones are still in flight.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::{codec, crc};

/// Buffers in flight at most (the one being written and the one queued behind it).
const IN_FLIGHT: usize = 2;

/// Frames to seal and write to one file.
struct Job {
    file: Arc<File>,
    path: PathBuf,
    /// Where `bytes` go in the file.
    offset: u64,
    bytes: Vec<u8>,
    /// Start of each frame in `bytes`; frame `i` ends where `i + 1` starts (the last at the end).
    frames: Vec<usize>,
}

/// A written job's buffers, emptied, and the outcome.
struct Done {
    bytes: Vec<u8>,
    frames: Vec<usize>,
    result: Result<()>,
}

/// The write thread of one segment appender and the buffers it has not given back yet.
pub(crate) struct BackgroundWrites {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    in_flight: usize,
    /// Emptied buffers back from the thread.
    spare: Vec<(Vec<u8>, Vec<usize>)>,
    /// The first failure, kept until reported.
    failed: Option<Error>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundWrites {
    /// Starts the write thread.
    pub(crate) fn start() -> Self {
        let (jobs, rx) = sync_channel::<Job>(IN_FLIGHT);
        let (tx, done) = channel::<Done>();
        let thread = std::thread::spawn(move || run(rx, tx));
        Self {
            jobs: Some(jobs),
            done,
            in_flight: 0,
            spare: Vec::new(),
            failed: None,
            thread: Some(thread),
        }
    }

    /// Hands `bytes` (whole frames, starting at `frames`, their prefixes still to seal) to the
    /// thread, to be written at `offset` of `file`, and returns empty buffers for the next ones.
    /// Fails with the first failure of an earlier write, if one has come back.
    pub(crate) fn submit(
        &mut self,
        file: &Arc<File>,
        path: PathBuf,
        offset: u64,
        bytes: Vec<u8>,
        frames: Vec<usize>,
    ) -> Result<(Vec<u8>, Vec<usize>)> {
        while self.in_flight >= IN_FLIGHT {
            self.receive_one()?;
        }
        self.collect_ready();
        self.check()?;
        let job = Job {
            file: file.clone(),
            path,
            offset,
            bytes,
            frames,
        };
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| Error::Invalid("the segment write thread has stopped".into()))?;
        self.in_flight += 1;
        let (mut bytes, mut frames) = self.spare.pop().unwrap_or_default();
        bytes.clear();
        frames.clear();
        Ok((bytes, frames))
    }

    /// Whether the queue is full, so that a [`submit`](Self::submit) would wait for the thread.
    pub(crate) fn is_full(&mut self) -> bool {
        self.collect_ready();
        self.in_flight >= IN_FLIGHT
    }

    /// Waits until every handed-over buffer is written; the first failure, if any.
    pub(crate) fn wait(&mut self) -> Result<()> {
        while self.in_flight > 0 {
            self.receive_one()?;
        }
        self.check()
    }

    /// Takes one finished job's buffers back (blocking).
    fn receive_one(&mut self) -> Result<()> {
        let done = self
            .done
            .recv()
            .map_err(|_| Error::Invalid("the segment write thread stopped unexpectedly".into()))?;
        self.finished(done);
        Ok(())
    }

    /// Takes back the buffers of jobs already finished (not blocking).
    fn collect_ready(&mut self) {
        while let Ok(done) = self.done.try_recv() {
            self.finished(done);
        }
    }

    fn finished(&mut self, done: Done) {
        self.in_flight -= 1;
        if let Err(e) = done.result {
            self.failed.get_or_insert(e);
        }
        self.spare.push((done.bytes, done.frames));
    }

    /// The first failure so far (reported once; later calls fail the same way).
    fn check(&mut self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(e) => Err(Error::Invalid(format!(
                "an earlier background segment write failed: {e}"
            ))),
        }
    }
}

impl Drop for BackgroundWrites {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has written what it holds.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: seal each job's frames, write them, hand the buffers back.
fn run(jobs: Receiver<Job>, done: Sender<Done>) {
    for mut job in jobs {
        let result = seal_and_write(
            &job.file,
            &job.path,
            job.offset,
            &mut job.bytes,
            &job.frames,
        );
        let reply = Done {
            bytes: job.bytes,
            frames: job.frames,
            result,
        };
        if done.send(reply).is_err() {
            return;
        }
    }
}

/// Seals the frames of `bytes` (starting at `frames`, their prefixes still to fill) and writes
/// them at `offset` of `file` (named `path` in errors).
pub(crate) fn seal_and_write(
    file: &File,
    path: &std::path::Path,
    offset: u64,
    bytes: &mut [u8],
    frames: &[usize],
) -> Result<()> {
    let ends = frames.iter().skip(1).copied().chain([bytes.len()]);
    let mut group = [(0, 0); 3];
    let mut n = 0;
    for frame in frames.iter().copied().zip(ends) {
        group[n] = frame;
        n += 1;
        if n == 3 {
            seal_three(bytes, group);
            n = 0;
        }
    }
    for (start, end) in &group[..n] {
        codec::seal_frame(&mut bytes[*start..*end]);
    }
    write_all_at(file, bytes, offset).map_err(|e| Error::io(path, e))
}

/// Writes all of `bytes` at `offset` of `file` without moving a cursor other writers share.
#[cfg(unix)]
pub(crate) fn write_all_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

/// Writes all of `bytes` at `offset` of `file` (each call positioned by itself).
#[cfg(windows)]
pub(crate) fn write_all_at(file: &File, mut bytes: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !bytes.is_empty() {
        match file.seek_write(bytes, offset)? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => {
                bytes = &bytes[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// Seals the frames at `bytes[start..end]` for each of `frames`, checksumming the three payloads
/// together.
fn seal_three(bytes: &mut [u8], frames: [(usize, usize); 3]) {
    let payload = |(start, end): (usize, usize)| start + codec::FRAME_PREFIX..end;
    let crcs = {
        let b: &[u8] = bytes;
        crc::crc32c_3(frames.map(|f| &b[payload(f)]))
    };
    for ((start, end), crc) in frames.into_iter().zip(crcs) {
        codec::seal_frame_with(&mut bytes[start..end], crc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames as the appender leaves them: a zeroed prefix and the payload.
    fn frames(payloads: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let (mut bytes, mut starts) = (Vec::new(), Vec::new());
        for p in payloads {
            starts.push(bytes.len());
            bytes.extend(std::iter::repeat_n(0, codec::FRAME_PREFIX));
            bytes.extend_from_slice(p);
        }
        (bytes, starts)
    }

    #[test]
    fn frames_are_sealed_and_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let file = Arc::new(File::create(&path).unwrap());
        let mut w = BackgroundWrites::start();
        let payloads: Vec<Vec<u8>> = (0..7u8).map(|i| vec![i; 3 + i as usize]).collect();
        let mut want = Vec::new();
        // Hand-overs of 4 and 3 frames: sealed three at a time plus one, and three.
        for chunk in payloads.chunks(4) {
            let offset = want.len() as u64;
            for p in chunk {
                codec::encode_frame(p, &mut want);
            }
            let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            let (bytes, starts) = frames(&refs);
            let (empty, no_frames) = w
                .submit(&file, path.clone(), offset, bytes, starts)
                .unwrap();
            assert!(empty.is_empty() && no_frames.is_empty());
        }
        w.wait().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[test]
    fn a_failed_write_is_reported_naming_the_file_and_stays_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read-only");
        std::fs::write(&path, b"").unwrap();
        // Opened for reading only: every write fails.
        let file = Arc::new(File::open(&path).unwrap());
        let mut w = BackgroundWrites::start();
        let (bytes, starts) = frames(&[b"abc"]);
        w.submit(&file, path.clone(), 0, bytes, starts).unwrap();
        let e = w.wait().unwrap_err().to_string();
        assert!(e.contains("read-only"), "{e}");
        let (bytes, starts) = frames(&[b"def"]);
        let e = w.submit(&file, path.clone(), 0, bytes, starts).unwrap_err();
        assert!(e.to_string().contains("read-only"), "{e}");
        assert!(w.wait().is_err());
    }
}
