//! Evidence, beside the commit log, that versions after its head were committed — what tells a
//! commit log cut back to an entry boundary (or replaced by an older copy) from a crash before
//! the last commit, after which recovery would cut the lost versions' records.

use std::path::{Path, PathBuf};

use crate::codec::{self, Hwm, HEADER_LEN};
use crate::error::{Error, Result};
use crate::log::{log_path, LogTail};
use crate::log_end::{end_path, EndRead};
use crate::open::{checkpoint_path, list_level, Mode};
use crate::segment::{level_dir, segment_path};

/// The newest record version in the uncommitted bytes of `level` (past `hwm`; every segment when
/// the level was never committed), with the file holding it.
fn newest_uncommitted(gen: &Path, level: u8, hwm: Option<Hwm>) -> Result<Option<(PathBuf, u64)>> {
    use std::io::{Read, Seek, SeekFrom};
    let (segs, _) = list_level(&level_dir(gen, level))?;
    let mut newest: Option<(PathBuf, u64)> = None;
    for seg in segs.into_iter().filter(|s| hwm.is_none_or(|h| *s >= h.seg)) {
        let path = segment_path(gen, level, seg);
        let from = match hwm {
            Some(h) if h.seg == seg => h.end,
            _ => HEADER_LEN as u64,
        };
        let mut tail = Vec::new();
        std::fs::File::open(&path)
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(from))?;
                f.read_to_end(&mut tail)
            })
            .map_err(|e| Error::io(&path, e))?;
        // Past holes: a commit's buffers are written side by side, so a crash can leave one.
        for f in codec::scan_frames_past_holes(&tail) {
            let payload =
                &tail[f.offset as usize + codec::FRAME_PREFIX..(f.offset + f.total) as usize];
            if let Ok((h, _)) = codec::decode_node(payload) {
                if newest.as_ref().is_none_or(|(_, v)| h.version > *v) {
                    newest = Some((path.clone(), h.version));
                }
            }
        }
    }
    Ok(newest)
}

/// Evidence, beside the commit log, that versions after its head `head` were committed:
/// `commits.end` recording a longer log, an index checkpoint of a later version and uncommitted
/// records of a version after `head + 1` (a writer writes those only once `head + 1` is
/// committed; a read-only open counts them only if the log did not grow meanwhile, i.e. no live
/// writer committed). Each item names its file.
pub(crate) fn commits_beyond_log(
    gen_path: &Path,
    end: &EndRead,
    checkpoint: Option<&std::result::Result<codec::Checkpoint, String>>,
    log_tail: &LogTail,
    head: &codec::CommitRecord,
    mode: Mode,
) -> Result<Vec<String>> {
    let mut evidence = Vec::new();
    if let EndRead::Found(e) = end {
        if e.log_len > log_tail.valid_len || e.version > head.version {
            evidence.push(format!(
                "{} records a log of {} bytes through version {}, but it holds {} bytes of \
                 complete entries through version {}",
                end_path(gen_path).display(),
                e.log_len,
                e.version,
                log_tail.valid_len,
                head.version
            ));
        }
    }
    if let Some(Ok(ck)) = checkpoint {
        if ck.version > head.version {
            evidence.push(format!(
                "{} indexes version {}",
                checkpoint_path(gen_path).display(),
                ck.version
            ));
        }
    }
    let mut later_records = Vec::new();
    for level in 0..codec::MAX_LEVELS as u8 {
        if !level_dir(gen_path, level).exists() {
            continue;
        }
        let hwm = head.hwms.get(level as usize).copied();
        if let Some((path, v)) = newest_uncommitted(gen_path, level, hwm)? {
            if v > head.version + 1 {
                later_records.push(format!(
                    "{} holds records of version {v} past the committed end",
                    path.display()
                ));
            }
        }
    }
    let log_len = std::fs::metadata(log_path(gen_path)).map_or(u64::MAX, |m| m.len());
    if mode.repairs() || log_len == log_tail.valid_len + log_tail.torn_bytes {
        evidence.extend(later_records);
    }
    Ok(evidence)
}
