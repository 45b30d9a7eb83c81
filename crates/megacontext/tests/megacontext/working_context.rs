//! The working context's invariants under random pushes, expansions and collapses
//! (proptest), the default oldest-first policy, position ids, and refused moves.

use metarep_gist_tree::NodeRef;
use metarep_megacontext::{CoverConfig, PositionRule, Slot, WorkingContext};
use proptest::prelude::*;

fn small() -> CoverConfig {
    CoverConfig {
        block: 4,
        budget: 24,
        recent: 6,
        max_level: 2,
    }
}

/// Arity 4, the newest 4 tokens raw, gists up to level 2, within `budget` slots.
fn arity4(budget: usize) -> CoverConfig {
    CoverConfig {
        block: 4,
        budget,
        recent: 4,
        max_level: 2,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Push(u64),
    Expand(usize),
    Collapse(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u64..40).prop_map(Op::Push),
        (0usize..30).prop_map(Op::Expand),
        (0usize..30).prop_map(Op::Collapse),
    ]
}

fn assert_positions(wc: &WorkingContext) {
    for rule in [PositionRule::SpanEnd, PositionRule::Slot] {
        let p = wc.positions(rule);
        assert_eq!(p.len(), wc.used());
        assert!(p.windows(2).all(|w| w[0] < w[1]), "{rule:?}: {p:?}");
    }
    // Span-end positions: raw tokens at their offset from the cover's start, gists at their
    // span's last token.
    let start = wc.start();
    for (slot, pos) in wc.slots().iter().zip(wc.positions(PositionRule::SpanEnd)) {
        let want = match slot {
            Slot::Token(t) => t - start,
            Slot::Gist(n) => wc.span(*n).end - 1 - start,
        };
        assert_eq!(pos as u64, want, "{slot:?}");
    }
}

proptest! {
    #[test]
    fn every_move_keeps_the_invariants(ops in proptest::collection::vec(op(), 1..60)) {
        let mut wc = WorkingContext::new(small()).unwrap();
        let mut len = 0;
        for op in ops {
            let before = wc.clone();
            match op {
                Op::Push(n) => {
                    wc.push(n);
                    len += n;
                }
                Op::Expand(i) => {
                    if wc.expand(i).is_err() {
                        prop_assert_eq!(&wc, &before, "a refused expansion changed the context");
                    }
                }
                Op::Collapse(i) => {
                    if wc.collapse(i).is_err() {
                        prop_assert_eq!(&wc, &before, "a refused collapse changed the context");
                    }
                }
            }
            prop_assert_eq!(wc.len(), len);
            if let Err(e) = wc.check() {
                return Err(TestCaseError::fail(format!("{e} after {op:?}: {wc:?}")));
            }
            assert_positions(&wc);
        }
    }
}

#[test]
fn pushes_compress_oldest_first_and_keep_the_newest_tokens_raw() {
    let mut wc = WorkingContext::new(CoverConfig::default()).unwrap();
    wc.push(512);
    // Exactly the budget: all raw.
    assert_eq!(wc.used(), 512);
    assert!(wc.entries().iter().all(|e| e.level == 0));
    wc.push(1);
    // One more token: the oldest block becomes its level-1 gist.
    assert_eq!(wc.entries()[0], NodeRef::new(1, 0));
    assert_eq!(wc.used(), 512 - 31 + 1);
    wc.push(100_000);
    wc.check().unwrap();
    assert!(wc.used() <= 512);
    let levels: Vec<u8> = wc.entries().iter().map(|e| e.level).collect();
    // Coarse to fine from oldest to newest, level-2 gists present, the tail raw.
    assert!(levels.windows(2).all(|w| w[0] >= w[1]), "{levels:?}");
    assert!(levels.contains(&2));
    assert_eq!(*levels.last().unwrap(), 0);
    // 100 513 tokens fit as 98 level-2 gists, level-1 gists and raw blocks: nothing left.
    assert_eq!(wc.start(), 0);
    // With gists of level 1 only, 512 slots cannot hold them: the oldest leave the context.
    let mut short = WorkingContext::new(CoverConfig {
        max_level: 1,
        ..CoverConfig::default()
    })
    .unwrap();
    short.push(100_513);
    short.check().unwrap();
    assert!(short.start() > 0 && short.start().is_multiple_of(32));
    assert_eq!(short.used(), 512);
}

#[test]
fn expand_and_collapse_are_inverse_and_refused_moves_name_the_problem() {
    let mut wc = WorkingContext::new(arity4(40)).unwrap();
    wc.push(64);
    wc.check().unwrap();
    assert_eq!(wc.used(), 40);
    // Make room: a raw block outside the newest tokens becomes its level-1 gist.
    let raw = (0..wc.entries().len())
        .find(|&i| wc.entries()[i].level == 0 && wc.collapsible(i))
        .expect("a raw block that can collapse");
    wc.collapse(raw).unwrap();
    assert_eq!(wc.used(), 37);
    let before = wc.clone();
    let i = wc
        .entries()
        .iter()
        .position(|e| e.level == 2)
        .expect("a level-2 gist");
    wc.expand(i).unwrap();
    assert_eq!(
        wc.entries()[i..i + 4]
            .iter()
            .filter(|e| e.level == 1)
            .count(),
        4
    );
    wc.collapse(i).unwrap();
    assert_eq!(wc, before);
    // A raw block cannot expand; an entry that does not exist cannot either.
    let raw = wc.entries().len() - 1;
    let err = wc.expand(raw).unwrap_err().to_string();
    assert!(err.contains("not a gist"), "{err}");
    assert!(wc.expand(999).is_err());
    // The newest block is inside the recent window: it cannot collapse.
    let err = wc.collapse(raw).unwrap_err().to_string();
    assert!(err.contains("newest 4 tokens"), "{err}");
}

#[test]
fn expansions_past_the_budget_are_refused() {
    let mut wc = WorkingContext::new(arity4(12)).unwrap();
    wc.push(64);
    assert!(wc.used() <= 12);
    let i = (0..wc.entries().len())
        .rev()
        .find(|&i| wc.expansion_cost(i).is_some_and(|c| wc.used() + c > 12))
        .expect("an expansion that does not fit");
    let err = wc.expand(i).unwrap_err().to_string();
    assert!(err.contains("more slots"), "{err}");
}

#[test]
fn configs_that_cannot_be_met_are_errors() {
    let bad = [
        CoverConfig {
            block: 1,
            ..CoverConfig::default()
        },
        CoverConfig {
            recent: 0,
            ..CoverConfig::default()
        },
        CoverConfig {
            max_level: 0,
            ..CoverConfig::default()
        },
        CoverConfig {
            budget: 64,
            recent: 64,
            ..CoverConfig::default()
        },
    ];
    for cfg in bad {
        assert!(WorkingContext::new(cfg).is_err(), "{cfg:?}");
    }
    let ok = CoverConfig {
        budget: 95,
        recent: 64,
        ..CoverConfig::default()
    };
    assert!(WorkingContext::new(ok).is_ok());
}
