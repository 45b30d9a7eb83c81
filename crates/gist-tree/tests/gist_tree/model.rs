//! Model-based property test: arbitrary sequences of append / edit / prune / restore / commit /
//! snapshot / compact / reopen keep the tree equal to a plain in-memory model at every version.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::{counts, expected_gists};

use metarep_gist_tree::{
    Error, FsyncPolicy, GistDType, MeanPool, NodeData, NodeRef, Provenance, Snapshot, TreeConfig,
    Writer, WriterOptions,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u32>, u64),
    Edit(u16, Vec<u32>),
    Prune(u8, u16),
    Restore(u16),
    Commit,
    Snapshot,
    DropSnapshot(u16),
    Compact,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop::collection::vec(0u32..50, 0..40), 0u64..3).prop_map(|(t, s)| Op::Append(t, s)),
        2 => (any::<u16>(), prop::collection::vec(0u32..50, 1..8)).prop_map(|(p, t)| Op::Edit(p, t)),
        2 => (1u8..4, any::<u16>()).prop_map(|(l, i)| Op::Prune(l, i)),
        1 => any::<u16>().prop_map(Op::Restore),
        4 => Just(Op::Commit),
        1 => Just(Op::Snapshot),
        1 => any::<u16>().prop_map(Op::DropSnapshot),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

/// One committed version of the model.
#[derive(Debug, Clone, Default)]
struct MVersion {
    tokens: Vec<u32>,
    pruned: BTreeSet<NodeRef>,
}

struct Model {
    cfg: TreeConfig,
    pool: MeanPool,
    versions: BTreeMap<u64, MVersion>,
    oldest: u64,
    pending: MVersion,
    dirty_blocks: BTreeSet<u64>,
    reclaimed: BTreeSet<NodeRef>,
}

impl Model {
    fn head(&self) -> u64 {
        *self.versions.keys().next_back().unwrap()
    }

    fn hidden_by(&self, pruned: &BTreeSet<NodeRef>, node: NodeRef) -> Option<NodeRef> {
        (node.level as usize + 1..64)
            .map(|l| node.ancestor(l as u8, self.cfg.block))
            .find(|a| pruned.contains(a))
    }

    fn check(&self, snap: &Snapshot) -> Result<(), TestCaseError> {
        let v = snap.version();
        let m = &self.versions[&v];
        let b = self.cfg.block as u64;
        prop_assert_eq!(
            snap.token_count(),
            m.tokens.len() as u64,
            "tokens at v{}",
            v
        );
        let c = counts(m.tokens.len() as u64, b);
        prop_assert_eq!(snap.levels(), c.len());
        let roots: BTreeSet<NodeRef> = snap.pruned_roots().into_iter().collect();
        prop_assert_eq!(&roots, &m.pruned, "pruned roots at v{}", v);
        let gists = expected_gists(&self.cfg, &self.pool, &m.tokens);
        for (l, n) in c.iter().enumerate() {
            prop_assert_eq!(snap.count(l as u8), *n);
            for j in 0..*n {
                let node = NodeRef::new(l as u8, j);
                let hidden = self.hidden_by(&m.pruned, node);
                match snap.get(node) {
                    Err(Error::Pruned { root, .. }) => {
                        prop_assert_eq!(Some(root), hidden, "node {} at v{}", node, v)
                    }
                    Err(e) => prop_assert!(false, "node {node} at v{v}: {e}"),
                    Ok(got) => {
                        prop_assert!(hidden.is_none(), "hidden node {} readable at v{}", node, v);
                        prop_assert!(got.written_at <= v);
                        match got.data {
                            NodeData::Tokens(t) => {
                                let s = (j * b) as usize;
                                let e = ((j + 1) * b).min(m.tokens.len() as u64) as usize;
                                prop_assert_eq!(&t[..], &m.tokens[s..e], "block {} at v{}", j, v);
                            }
                            NodeData::Gist(g) => {
                                prop_assert_eq!(
                                    &g,
                                    &gists[l][j as usize],
                                    "gist {} at v{}",
                                    node,
                                    v
                                )
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn opts() -> WriterOptions {
    WriterOptions {
        fsync: FsyncPolicy::Off,
        checkpoint_bytes: 2048,
        telemetry: true,
        ..WriterOptions::default()
    }
}

fn run(block: u32, width: u32, dtype: GistDType, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TreeConfig {
        block,
        width,
        dtype,
        segment_bytes: 4096,
    };
    let pool = MeanPool::new(width as usize, 11).unwrap();
    let mut w = Writer::create(dir.path(), cfg, opts(), Box::new(pool.clone())).unwrap();
    let mut model = Model {
        cfg,
        pool: pool.clone(),
        versions: BTreeMap::from([(0, MVersion::default())]),
        oldest: 0,
        pending: MVersion::default(),
        dirty_blocks: BTreeSet::new(),
        reclaimed: BTreeSet::new(),
    };
    let b = block as u64;
    let mut held: Vec<Snapshot> = Vec::new();
    for op in ops {
        match op {
            Op::Append(t, src) => {
                let start = model.pending.tokens.len() as u64;
                w.append(&t, &Provenance::source(src, start, start + t.len() as u64))
                    .unwrap();
                let end = start + t.len() as u64;
                if !t.is_empty() {
                    model.dirty_blocks.extend(start / b..end.div_ceil(b));
                }
                model.pending.tokens.extend(&t);
            }
            Op::Edit(p, t) => {
                let len = model.pending.tokens.len();
                if len == 0 {
                    prop_assert!(w.edit(0, &t, &Provenance::default()).is_err());
                    continue;
                }
                let start = p as usize % len;
                let end = start + t.len();
                let r = w.edit(start as u64, &t, &Provenance::source(9, 0, 1));
                let hidden = (start as u64 / b..(end as u64).div_ceil(b)).any(|blk| {
                    model
                        .hidden_by(&model.pending.pruned, NodeRef::new(0, blk))
                        .is_some()
                });
                if end > len || hidden {
                    prop_assert!(r.is_err(), "edit {start}..{end} of {len} should fail");
                } else {
                    r.unwrap();
                    model.pending.tokens[start..end].copy_from_slice(&t);
                    model
                        .dirty_blocks
                        .extend(start as u64 / b..(end as u64).div_ceil(b));
                }
            }
            Op::Prune(l, i) => {
                let committed = &model.versions[&model.head()];
                let c = counts(committed.tokens.len() as u64, b);
                let Some(n) = c.get(l as usize).copied().filter(|n| *n > 0) else {
                    continue;
                };
                let node = NodeRef::new(l, i as u64 % n);
                let span = node.token_span(block);
                let ok = !model.pending.pruned.contains(&node)
                    && model.hidden_by(&model.pending.pruned, node).is_none()
                    && model
                        .dirty_blocks
                        .range(span.start / b..span.end / b)
                        .next()
                        .is_none();
                let r = w.prune(node);
                prop_assert_eq!(r.is_ok(), ok, "prune {}: {:?}", node, r.err());
                if ok {
                    model.pending.pruned.insert(node);
                }
            }
            Op::Restore(i) => {
                if model.pending.pruned.is_empty() {
                    continue;
                }
                let node = *model
                    .pending
                    .pruned
                    .iter()
                    .nth(i as usize % model.pending.pruned.len())
                    .unwrap();
                let r = w.restore(node);
                if model.reclaimed.contains(&node) {
                    let reclaimed = matches!(r, Err(Error::Reclaimed { .. }));
                    prop_assert!(reclaimed, "restore of reclaimed {}: {:?}", node, r.err());
                } else {
                    r.unwrap();
                    model.pending.pruned.remove(&node);
                }
            }
            Op::Commit => {
                let v = w.commit().unwrap();
                prop_assert_eq!(v, model.head() + 1);
                model.versions.insert(v, model.pending.clone());
                model.dirty_blocks.clear();
                model.check(&w.snapshot().unwrap())?;
            }
            Op::Snapshot => held.push(w.snapshot().unwrap()),
            Op::DropSnapshot(i) => {
                if !held.is_empty() {
                    held.remove(i as usize % held.len());
                }
            }
            Op::Compact => {
                if w.has_pending() {
                    prop_assert!(w.compact().is_err());
                    continue;
                }
                let head = model.head();
                let floor = held
                    .iter()
                    .map(|s| s.version())
                    .min()
                    .unwrap_or(head)
                    .max(model.oldest);
                let rep = w.compact().unwrap();
                prop_assert_eq!(rep.floor, floor);
                let always: Vec<NodeRef> = model.versions[&floor]
                    .pruned
                    .iter()
                    .filter(|r| {
                        model
                            .versions
                            .range(floor..)
                            .all(|(_, mv)| mv.pruned.contains(r))
                    })
                    .copied()
                    .collect();
                model.reclaimed.extend(always);
                model.oldest = floor;
            }
            Op::Reopen => {
                drop(w);
                let (w2, report) =
                    Writer::open(dir.path(), opts(), Box::new(pool.clone())).unwrap();
                prop_assert!(report.is_clean(), "{}", report.summary());
                w = w2;
                model.pending = model.versions[&model.head()].clone();
                model.dirty_blocks.clear();
            }
        }
    }
    for s in &held {
        model.check(s)?;
    }
    for v in model.oldest..=model.head() {
        model.check(&w.snapshot_at(v).unwrap())?;
    }
    if model.oldest > 0 {
        let old = w.snapshot_at(model.oldest - 1);
        prop_assert!(
            matches!(old, Err(Error::NoSuchVersion { .. })),
            "old version readable"
        );
    }
    drop(held);
    drop(w);
    let report = metarep_gist_tree::verify(dir.path()).unwrap();
    prop_assert!(report.ok(), "{:?}", report.problems);
    let reader = metarep_gist_tree::Reader::open(dir.path(), false).unwrap();
    model.check(&reader.snapshot().unwrap())?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn tree_equals_model_at_every_version(
        block in 2u32..5,
        width in 1u32..5,
        dtype in prop_oneof![Just(GistDType::F16), Just(GistDType::Bf16), Just(GistDType::F32)],
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run(block, width, dtype, ops)?;
    }
}
