//! Corruption tests: flipped bytes, truncated files, missing segments and foreign files are
//! detected and reported by file name — by `verify`, by opening, by reading — and never panic.

use std::path::{Path, PathBuf};

use metarep_gist_tree::{
    verify, Error, FsyncPolicy, GistDType, MeanPool, NodeRef, Provenance, Reader, TreeConfig,
    Writer, WriterOptions,
};
use rand::Rng;

fn cfg() -> TreeConfig {
    TreeConfig {
        block: 4,
        width: 4,
        dtype: GistDType::Bf16,
        segment_bytes: 4096,
    }
}

fn pool() -> Box<MeanPool> {
    Box::new(MeanPool::new(4, 3).unwrap())
}

fn opts() -> WriterOptions {
    WriterOptions {
        fsync: FsyncPolicy::Off,
        ..WriterOptions::default()
    }
}

/// A closed tree with several versions, several segments per level, a checkpoint, telemetry.
fn build(dir: &Path) {
    let mut w = Writer::create(dir, cfg(), opts(), pool()).unwrap();
    for v in 0..12u32 {
        let t: Vec<u32> = (0..37).map(|i| (v * 37 + i) % 500).collect();
        w.append(&t, &Provenance::source(1, 0, 37)).unwrap();
        if v % 4 == 3 {
            w.edit(5, &[7, 7, 7], &Provenance::source(2, 0, 3)).unwrap();
        }
        w.commit().unwrap();
    }
    let s = w.snapshot().unwrap();
    s.tokens(0..100).unwrap();
    drop(s);
    w.close().unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn seg(dir: &Path, level: u8, seg: u32) -> PathBuf {
    dir.join("gen-000001")
        .join(format!("L{level:02}"))
        .join(format!("{seg:06}.seg"))
}

/// Reads everything readable; errors are fine, panics are not.
fn read_all(dir: &Path) -> Result<(), Error> {
    let r = Reader::open(dir, false)?;
    let s = r.snapshot()?;
    s.tokens(0..s.token_count())?;
    for l in 1..s.levels() as u8 {
        s.gists(l, 0..s.count(l))?;
    }
    Ok(())
}

fn assert_names(problems: &[String], path: &Path) {
    let name = path.display().to_string();
    assert!(
        problems.iter().any(|p| p.contains(&name)),
        "no problem names {name}: {problems:?}"
    );
}

#[test]
fn flipped_bytes_are_detected_by_name() {
    let base = tempfile::tempdir().unwrap();
    build(base.path());
    let all = files(base.path());
    let detectable: Vec<&PathBuf> = all
        .iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".seg") || n == "commits.log" || n == "index.ckpt" || n == "telemetry.log"
        })
        .collect();
    assert!(detectable.len() >= 6, "{detectable:?}");
    let mut rng = metarep_core::rng::seeded(9);
    for round in 0..60 {
        let work = tempfile::tempdir().unwrap();
        copy_dir(base.path(), work.path());
        let rel = detectable[round % detectable.len()]
            .strip_prefix(base.path())
            .unwrap();
        let path = work.path().join(rel);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = rng.random_range(0..bytes.len());
        bytes[at] ^= 1 << rng.random_range(0..8);
        std::fs::write(&path, &bytes).unwrap();
        let report = verify(work.path()).unwrap();
        assert!(
            !report.ok(),
            "flip at {at} of {} not detected",
            path.display()
        );
        assert_names(&report.problems, &path);
        // Opening and reading report errors, never panic.
        let _ = read_all(work.path());
        let _ = Writer::open(work.path(), opts(), pool());
    }
}

#[test]
fn random_damage_anywhere_never_panics() {
    let base = tempfile::tempdir().unwrap();
    build(base.path());
    let all = files(base.path());
    let mut rng = metarep_core::rng::seeded(10);
    for round in 0..40 {
        let work = tempfile::tempdir().unwrap();
        copy_dir(base.path(), work.path());
        let path = work
            .path()
            .join(all[round % all.len()].strip_prefix(base.path()).unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        match round % 3 {
            0 if !bytes.is_empty() => {
                for _ in 0..4 {
                    let at = rng.random_range(0..bytes.len());
                    bytes[at] = rng.random();
                }
            }
            1 => bytes.truncate(rng.random_range(0..=bytes.len())),
            _ => bytes.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
        }
        std::fs::write(&path, &bytes).unwrap();
        let _ = verify(work.path());
        let _ = read_all(work.path());
        if let Ok((w, _)) = Writer::open(work.path(), opts(), pool()) {
            drop(w);
            let _ = read_all(work.path());
        }
    }
}

#[test]
fn truncated_committed_segment_is_reported() {
    let work = tempfile::tempdir().unwrap();
    build(work.path());
    let p = seg(work.path(), 0, 0);
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let report = verify(work.path()).unwrap();
    assert_names(&report.problems, &p);
    match Writer::open(work.path(), opts(), pool()) {
        Err(Error::Corrupt { path, .. }) => assert_eq!(path, p),
        other => panic!(
            "expected Corrupt naming {}, got {:?}",
            p.display(),
            other.err()
        ),
    }
    // Nothing was cut: the damaged file is left for inspection.
    assert_eq!(std::fs::metadata(&p).unwrap().len(), len - 10);
}

/// Offsets of the commit-log entries of `dir`'s generation 1.
fn log_entries(dir: &Path) -> Vec<u64> {
    let bytes = std::fs::read(dir.join("gen-000001/commits.log")).unwrap();
    let parsed = metarep_gist_tree::codec::parse_log(&bytes).unwrap();
    parsed.items.iter().map(|(at, _)| *at).collect()
}

fn set_len(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Rewrites `commits.end` as the writer left it after a log append of `log_len` bytes through
/// `version` (what a crash during the next append leaves).
fn set_end(dir: &Path, log_len: u64, version: u64) {
    let meta = metarep_gist_tree::TreeMeta::load(dir).unwrap();
    let end = metarep_gist_tree::log_end::LogEnd { log_len, version };
    std::fs::write(dir.join("gen-000001/commits.end"), end.encode(&meta, 1)).unwrap();
}

#[test]
fn torn_last_commit_entry_is_cut_with_its_records() {
    let work = tempfile::tempdir().unwrap();
    build(work.path());
    let log = work.path().join("gen-000001/commits.log");
    let len = std::fs::metadata(&log).unwrap().len();
    // A crash inside the append of commit 12: the log ends inside its entry, and commits.end
    // still records the log through version 11.
    set_len(&log, len - 3);
    set_end(work.path(), *log_entries(work.path()).last().unwrap(), 11);
    std::fs::remove_file(work.path().join("gen-000001/index.ckpt")).unwrap();
    // verify (read only) sees version 11 and 12's records as uncommitted.
    let report = verify(work.path()).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.version, 11);
    assert!(report.uncommitted_bytes > 0);
    let (w, rec) = Writer::open(work.path(), opts(), pool()).unwrap();
    assert_eq!(rec.version, 11);
    assert!(rec.log_torn_bytes > 0);
    assert!(rec.dropped_records() > 0, "{}", rec.summary());
    assert_eq!(w.snapshot().unwrap().token_count(), 11 * 37);
    drop(w);
    let report = verify(work.path()).unwrap();
    assert!(report.ok() && report.uncommitted_bytes == 0, "{report:?}");
}

/// Every file of the tree with its bytes.
fn image(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files(dir)
        .into_iter()
        .filter(|p| !p.ends_with("telemetry.log"))
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

/// Zeroes the first record of `version` in every segment file: the hole a crash leaves when a
/// commit's later buffer reached the file before an earlier one.
fn punch_holes(dir: &Path, version: u64) {
    for path in files(&dir.join("gen-000001")) {
        if path.extension().is_none_or(|e| e != "seg") {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let items = metarep_gist_tree::codec::parse_segment(&bytes)
            .unwrap()
            .items;
        let Some(i) = items.iter().position(|(_, h)| h.version == version) else {
            continue;
        };
        let end = items.get(i + 1).map_or(bytes.len(), |(at, _)| *at as usize);
        bytes[items[i].0 as usize..end].fill(0);
        std::fs::write(&path, bytes).unwrap();
    }
}

/// A commit log cut back to an entry boundary (what a crash before the commit leaves, except
/// that here the commit had happened) is refused by readers, `verify` and writers, naming the
/// evidence, and nothing is deleted until a writer is told to discard.
#[test]
fn commit_log_cut_back_by_whole_entries_is_refused_until_discarded() {
    // (entries cut, keep the checkpoint, keep commits.end, a hole before the last version's
    // records): each leaves some evidence.
    for (cut, keep_ckpt, keep_end, hole) in [
        (1, true, true, false),
        (1, false, true, false),
        (2, false, true, false),
        (3, true, false, false),
        (2, false, false, false),
        (2, false, false, true),
    ] {
        let case =
            format!("cut {cut}, checkpoint {keep_ckpt}, commits.end {keep_end}, hole {hole}");
        let work = tempfile::tempdir().unwrap();
        build(work.path());
        let gen = work.path().join("gen-000001");
        let entries = log_entries(work.path());
        set_len(&gen.join("commits.log"), entries[entries.len() - cut]);
        if !keep_ckpt {
            std::fs::remove_file(gen.join("index.ckpt")).unwrap();
        }
        if !keep_end {
            std::fs::remove_file(gen.join("commits.end")).unwrap();
        }
        if hole {
            punch_holes(work.path(), 12);
        }
        let before = image(work.path());
        let head = 12 - cut as u64;

        let report = verify(work.path()).unwrap();
        assert!(!report.ok(), "{case}: verify passed");
        assert_names(&report.problems, &gen.join("commits.log"));
        if keep_end {
            assert_names(&report.problems, &gen.join("commits.end"));
        } else if keep_ckpt {
            assert_names(&report.problems, &gen.join("index.ckpt"));
        }
        let reader = Reader::open(work.path(), false);
        {
            assert!(
                matches!(reader, Err(Error::CommitsMissing { .. })),
                "{case}: reader opened: {:?}",
                reader.err()
            );
        }
        match Writer::open(work.path(), opts(), pool()) {
            Err(Error::CommitsMissing { path, evidence }) => {
                assert_eq!(path, gen.join("commits.log"), "{case}");
                assert!(!evidence.is_empty(), "{case}");
            }
            other => panic!("{case}: expected CommitsMissing, got {:?}", other.err()),
        }
        assert!(
            image(work.path()) == before,
            "{case}: a refused open changed files"
        );

        let discard = WriterOptions {
            discard_uncommitted: true,
            ..opts()
        };
        let (w, rec) = Writer::open(work.path(), discard, pool()).unwrap();
        assert_eq!(rec.version, head, "{case}");
        assert!(!rec.discarded_committed.is_empty(), "{case}");
        assert!(rec.dropped_records() > 0, "{case}: {}", rec.summary());
        assert!(
            rec.summary().contains("gave up versions"),
            "{}",
            rec.summary()
        );
        assert_eq!(w.snapshot().unwrap().token_count(), head * 37, "{case}");
        drop(w);
        let report = verify(work.path()).unwrap();
        assert!(report.ok(), "{case}: after discard: {:?}", report.problems);
        read_all(work.path()).unwrap();
    }
}

#[test]
fn missing_segment_is_reported_by_name() {
    let work = tempfile::tempdir().unwrap();
    build(work.path());
    let p = seg(work.path(), 1, 0);
    std::fs::remove_file(&p).unwrap();
    let report = verify(work.path()).unwrap();
    assert_names(&report.problems, &p);
    match Writer::open(work.path(), opts(), pool()) {
        Err(Error::MissingSegment { path, level }) => {
            assert_eq!(path, p);
            assert_eq!(level, 1);
        }
        other => panic!("expected MissingSegment, got {:?}", other.err()),
    }
    assert!(matches!(
        read_all(work.path()),
        Err(Error::MissingSegment { .. })
    ));
}

#[test]
fn foreign_files_are_reported_by_name() {
    let work = tempfile::tempdir().unwrap();
    build(work.path());
    // A stray file: opening works (and lists it), verify fails naming it.
    let junk = work.path().join("gen-000001/L00/notes.txt");
    std::fs::write(&junk, b"hello").unwrap();
    let report = verify(work.path()).unwrap();
    assert_names(&report.problems, &junk);
    let (w, rec) = Writer::open(work.path(), opts(), pool()).unwrap();
    assert!(rec.foreign_files.contains(&junk));
    drop(w);
    std::fs::remove_file(&junk).unwrap();

    // A segment of another tree with the same shape in place of ours.
    let other = tempfile::tempdir().unwrap();
    build(other.path());
    let ours = seg(work.path(), 0, 1);
    std::fs::copy(seg(other.path(), 0, 1), &ours).unwrap();
    let report = verify(work.path()).unwrap();
    assert_names(&report.problems, &ours);
    match Writer::open(work.path(), opts(), pool()) {
        Err(Error::ForeignFile { path, reason }) => {
            assert_eq!(path, ours);
            assert!(reason.contains("another tree"), "{reason}");
        }
        other => panic!("expected ForeignFile, got {:?}", other.err()),
    }
    std::fs::copy(seg(base_copy(&other), 0, 1), &ours).ok();

    // Garbage named like an uncommitted segment: refused by name, and not deleted.
    let fresh = tempfile::tempdir().unwrap();
    build(fresh.path());
    let fake = seg(fresh.path(), 0, 99);
    std::fs::write(&fake, vec![0xAB; 100]).unwrap();
    match Writer::open(fresh.path(), opts(), pool()) {
        Err(Error::ForeignFile { path, .. }) => assert_eq!(path, fake),
        other => panic!("expected ForeignFile, got {:?}", other.err()),
    }
    assert!(fake.exists());
}

fn base_copy(d: &tempfile::TempDir) -> &Path {
    d.path()
}

#[test]
fn reading_a_damaged_record_names_the_segment() {
    let work = tempfile::tempdir().unwrap();
    build(work.path());
    let r = Reader::open(work.path(), false).unwrap();
    let s = r.snapshot().unwrap();
    let p = seg(work.path(), 0, 0);
    let mut bytes = std::fs::read(&p).unwrap();
    // The first record's payload starts after the 32-byte header and 8-byte frame prefix.
    bytes[32 + 8 + 20] ^= 0xFF;
    std::fs::write(&p, &bytes).unwrap();
    // The snapshot's map sees the new bytes (same inode, rewritten in place).
    match s.get(NodeRef::new(0, 0)) {
        Err(Error::Corrupt { path, .. }) => assert_eq!(path, p),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn parsers_survive_arbitrary_bytes() {
    use metarep_gist_tree::codec;
    let base = tempfile::tempdir().unwrap();
    build(base.path());
    let images: Vec<Vec<u8>> = files(base.path())
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let meta = metarep_gist_tree::TreeMeta::load(base.path()).unwrap();
    let mut rng = metarep_core::rng::seeded(12);
    for i in 0..3000 {
        let mut b = if i % 4 == 0 {
            (0..rng.random_range(0..200))
                .map(|_| rng.random())
                .collect()
        } else {
            images[i % images.len()].clone()
        };
        if !b.is_empty() {
            for _ in 0..rng.random_range(1..5) {
                let at = rng.random_range(0..b.len());
                b[at] = rng.random();
            }
            b.truncate(rng.random_range(0..=b.len()));
        }
        let _ = codec::parse_segment(&b);
        let _ = codec::parse_log(&b);
        let _ = codec::parse_checkpoint(&b);
        let _ = codec::decode_telemetry(&b);
        let _ = codec::decode_node(&b);
        let _ = codec::LogEntry::decode(&b);
        let _ = metarep_gist_tree::log_end::LogEnd::decode(&b, &meta, 1);
    }
}

/// A tree whose `tree.json` was lost is refused by name — and `init` (create) refuses to replace
/// its data instead of treating it as the leftovers of an interrupted create.
#[test]
fn a_lost_tree_json_is_named_and_create_keeps_the_data() {
    let work = tempfile::tempdir().unwrap();
    build(work.path());
    let meta = work.path().join("tree.json");
    let saved = std::fs::read(&meta).unwrap();
    std::fs::remove_file(&meta).unwrap();
    match Reader::open(work.path(), false) {
        Err(Error::Corrupt { path, reason, .. }) => {
            assert_eq!(path, meta);
            assert!(reason.contains("holds a tree's data"), "{reason}");
        }
        other => panic!("expected Corrupt naming tree.json, got {:?}", other.err()),
    }
    assert!(matches!(
        Writer::create(work.path(), cfg(), opts(), pool()),
        Err(Error::AlreadyExists { .. })
    ));
    std::fs::write(&meta, saved).unwrap();
    assert!(verify(work.path()).unwrap().ok());
    read_all(work.path()).unwrap();
}

/// What a tree holds: every version's tokens and every gist at its head.
#[derive(PartialEq, Debug)]
struct Content {
    versions: Vec<(u64, Vec<u32>)>,
    gists: Vec<Vec<f32>>,
}

/// Reads `versions` (tokens) and the head's gists of every level through a read-only handle.
fn content(dir: &Path, versions: &[u64]) -> Result<Content, Error> {
    let r = Reader::open(dir, false)?;
    let head = r.snapshot()?;
    let gists = (1..head.levels() as u8)
        .map(|l| head.gists(l, 0..head.count(l)))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for v in versions {
        let s = r.snapshot_at(*v)?;
        out.push((*v, s.tokens(0..s.token_count())?));
    }
    Ok(Content {
        versions: out,
        gists,
    })
}

/// One kind of damage, applied to a copy of the tree.
#[derive(Debug, Clone)]
enum Damage {
    /// XOR one byte at an offset.
    Flip(u64),
    /// Cut the file to a length.
    Truncate(u64),
    /// Remove the file.
    Delete,
    /// Exchange the file's bytes with another file of the tree.
    Swap(PathBuf),
    /// Replace it by the file of the same name from another tree of the same shape.
    Foreign,
}

fn apply(path: &Path, damage: &Damage, foreign_tree: &Path, work: &Path) {
    match damage {
        Damage::Flip(at) => {
            let mut b = std::fs::read(path).unwrap();
            b[*at as usize] ^= 0x20;
            std::fs::write(path, b).unwrap();
        }
        Damage::Truncate(len) => set_len(path, *len),
        Damage::Delete => std::fs::remove_file(path).unwrap(),
        Damage::Swap(other) => {
            let (a, b) = (std::fs::read(path).unwrap(), std::fs::read(other).unwrap());
            std::fs::write(path, b).unwrap();
            std::fs::write(other, a).unwrap();
        }
        Damage::Foreign => {
            let src = foreign_tree.join(path.strip_prefix(work).unwrap());
            std::fs::copy(src, path).unwrap();
        }
    }
}

/// Frame boundaries of a framed file (segment, commit log, telemetry): where truncations are
/// indistinguishable from a file that was never longer.
fn boundaries(bytes: &[u8]) -> Vec<u64> {
    let (frames, _) = metarep_gist_tree::codec::scan_frames(bytes, 32);
    frames.iter().map(|f| f.offset).collect()
}

/// The damages tried on `path`: flips in the header, the middle and the last byte; truncations
/// to 0, inside the header, at the first, middle and last record boundary and mid-record;
/// deletion; a swap with a sibling file; the same file of another tree.
fn damages(path: &Path, all: &[PathBuf]) -> Vec<Damage> {
    let bytes = std::fs::read(path).unwrap();
    let len = bytes.len() as u64;
    if len == 0 {
        // `LOCK`: only its existence matters.
        return vec![Damage::Delete];
    }
    let mut out = vec![
        Damage::Flip(3),
        Damage::Flip(len / 2),
        Damage::Flip(len - 1),
    ];
    let mut cuts = vec![0, 20.min(len - 1)];
    let framed = ["seg", "log"]
        .iter()
        .any(|e| path.extension().is_some_and(|x| x == *e));
    if framed {
        let b = boundaries(&bytes);
        if let (Some(first), Some(last)) = (b.first(), b.last()) {
            cuts.extend([*first, b[b.len() / 2], *last, last + 5]);
        }
    } else {
        cuts.push(len / 2);
    }
    cuts.push(len - 1);
    cuts.sort_unstable();
    cuts.dedup();
    out.extend(cuts.into_iter().filter(|c| *c < len).map(Damage::Truncate));
    out.push(Damage::Delete);
    if let Some(sibling) = all
        .iter()
        .find(|p| *p != path && p.parent() == path.parent() && p.is_file())
    {
        out.push(Damage::Swap(sibling.clone()));
    }
    out.push(Damage::Foreign);
    out
}

/// The corruption matrix of `docs/storage.md`: every file of a tree (data, log, checkpoint,
/// commits.end, CURRENT, tree.json, telemetry), flipped, truncated at its boundaries and
/// mid-record, deleted, swapped and replaced by another tree's. In every trial either `verify`
/// names the damage (by file) or the damage is harmless: every read returns the original
/// content. No read ever returns wrong content, and a writer that opens never loses a committed
/// version.
#[test]
fn corruption_matrix_is_reported_by_file_with_no_silent_wrong_read() {
    let base = tempfile::tempdir().unwrap();
    build(base.path());
    let foreign = tempfile::tempdir().unwrap();
    build(foreign.path());
    let versions = [3u64, 8, 12];
    let original = content(base.path(), &versions).unwrap();
    let all = files(base.path());
    let mut tally: std::collections::BTreeMap<String, [usize; 3]> = Default::default();
    for rel in all.iter().map(|p| p.strip_prefix(base.path()).unwrap()) {
        for damage in damages(&base.path().join(rel), &all) {
            let work = tempfile::tempdir().unwrap();
            copy_dir(base.path(), work.path());
            let path = work.path().join(rel);
            let damage = match damage {
                Damage::Swap(other) => {
                    Damage::Swap(work.path().join(other.strip_prefix(base.path()).unwrap()))
                }
                d => d,
            };
            apply(&path, &damage, foreign.path(), work.path());
            let case = format!("{} {damage:?}", rel.display());
            let problems = match verify(work.path()) {
                Ok(r) => r.problems,
                Err(e) => vec![e.to_string()],
            };
            let read = content(work.path(), &versions);
            if let Ok(c) = &read {
                assert_eq!(c, &original, "{case}: a read returned wrong content");
            }
            let kind = if problems.is_empty() {
                assert!(
                    read.is_ok(),
                    "{case}: verify passed but reading failed: {:?}",
                    read.err()
                );
                0
            } else {
                let mut names = vec![path.display().to_string()];
                if let Damage::Swap(other) = &damage {
                    names.push(other.display().to_string());
                }
                assert!(
                    problems.iter().any(|p| names.iter().any(|n| p.contains(n))),
                    "{case}: no problem names {names:?}: {problems:?}"
                );
                if read.is_ok() {
                    1
                } else {
                    2
                }
            };
            // A writer that opens the damaged tree repairs only what is not committed data:
            // what read correctly before still does, nothing reads wrong.
            if let Ok((w, _)) = Writer::open(work.path(), opts(), pool()) {
                drop(w);
                match content(work.path(), &versions) {
                    Ok(c) => assert_eq!(c, original, "{case}: wrong content after a writer opened"),
                    Err(e) => assert!(
                        read.is_err(),
                        "{case}: a writer opened, then reads failed: {e}"
                    ),
                }
            }
            let group = rel
                .to_string_lossy()
                .replace(|c: char| c.is_ascii_digit(), "N");
            tally
                .entry(format!(
                    "{group} {}",
                    format!("{damage:?}").split('(').next().unwrap()
                ))
                .or_default()[kind] += 1;
        }
    }
    eprintln!("damage: harmless / reported, reads intact / reported, reads refused");
    for (k, [a, b, c]) in &tally {
        eprintln!("{k}: {a} / {b} / {c}");
    }
}
