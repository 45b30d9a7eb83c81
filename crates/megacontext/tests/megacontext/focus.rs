//! The focus allocator: the cover stays valid under any scores (proptest), the budget holds
//! after new tokens arrive, an expansion is paid for by the least harmful collapses and only
//! when the trade pays, nodes a move made stay frozen for the cooldown, and telemetry counts.

use metarep_gist_tree::NodeRef;
use metarep_megacontext::focus::{candidates, Move};
use metarep_megacontext::{Allocator, CoverConfig, FocusConfig, WorkingContext};
use proptest::prelude::*;

fn config(budget: usize) -> CoverConfig {
    CoverConfig {
        block: 4,
        budget,
        recent: 4,
        max_level: 2,
    }
}

/// Scores with `expand` / `collapse` for every entry except those given.
fn scores(
    wc: &WorkingContext,
    default: [f32; 2],
    special: &[(NodeRef, [f32; 2])],
) -> Vec<[f32; 2]> {
    wc.entries()
        .iter()
        .map(|e| {
            special
                .iter()
                .find(|(n, _)| n == e)
                .map_or(default, |(_, s)| *s)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_scores_keep_a_valid_cover(
        steps in prop::collection::vec((1u64..12, prop::collection::vec(-2.0f32..2.0, 64)), 1..30),
        budget in 8usize..30,
        moves in 1usize..6,
        cooldown in 0usize..4,
    ) {
        let mut wc = WorkingContext::new(config(budget)).unwrap();
        let mut alloc = Allocator::new(FocusConfig { max_moves: moves, margin: 0.0, cooldown });
        for (n, raw) in steps {
            wc.append(n);
            let s: Vec<[f32; 2]> = (0..wc.entries().len())
                .map(|i| [raw[(2 * i) % 64], raw[(2 * i + 1) % 64]])
                .collect();
            alloc.step(&mut wc, &s).unwrap();
            prop_assert!(wc.check().is_ok(), "{:?}", wc.check());
        }
        let st = alloc.stats();
        prop_assert!(st.utilisation() <= 1.0 + 1e-9);
    }
}

/// 64 tokens through arity 4 within 16 slots: level-2 and level-1 gists, then raw tokens.
fn grown() -> WorkingContext {
    let mut wc = WorkingContext::new(config(16)).unwrap();
    wc.push(64);
    wc.check().unwrap();
    wc
}

#[test]
fn an_expansion_is_paid_by_the_least_harmful_collapse() {
    let mut wc = grown();
    let (target, cheap) = target_and_cheap(&wc);
    // The budget is full: expanding needs collapses.
    let cost = wc.expansion_cost(wc.entries().iter().position(|e| *e == target).unwrap());
    assert!(wc.used() + cost.unwrap() > 16, "{:?}", wc.entries());
    let collapses: Vec<NodeRef> = candidates(&wc)
        .iter()
        .filter(|c| c.kind == Move::Collapse)
        .map(|c| c.node)
        .collect();
    let mut special = vec![(target, [5.0, -9.0])];
    special.extend(
        collapses
            .iter()
            .map(|c| (*c, [-1.0, if *c == cheap { -0.5 } else { -3.0 }])),
    );
    let s = scores(&wc, [-1.0, -9.0], &special);
    let mut alloc = Allocator::new(FocusConfig::default());
    let made = alloc.step(&mut wc, &s).unwrap();
    wc.check().unwrap();
    assert!(made >= 2, "{made} moves");
    assert!(!wc.entries().contains(&target), "the gist was expanded");
    assert!(wc.entries().contains(&target.children(4)[0]));
    assert!(!wc.entries().contains(&cheap), "the cheap family collapsed");
    assert_eq!(alloc.stats().expansions, 1);
}

#[test]
fn a_trade_that_does_not_pay_is_refused() {
    let mut wc = grown();
    let before = wc.clone();
    // Expanding is worth 1, every collapse costs 2: the trade totals −1 < margin 0.
    let s = scores(&wc, [1.0, -2.0], &[]);
    let mut alloc = Allocator::new(FocusConfig::default());
    assert_eq!(alloc.step(&mut wc, &s).unwrap(), 0);
    assert_eq!(wc, before);
    // With a margin, even a paying trade must clear it.
    let s = scores(&wc, [3.0, -2.0], &[]);
    let mut strict = Allocator::new(FocusConfig {
        margin: 1.5,
        ..FocusConfig::default()
    });
    assert_eq!(strict.step(&mut wc, &s).unwrap(), 0);
    assert_eq!(wc, before);
}

/// The last level-1 gist of `wc` and the first family a collapse can take.
fn target_and_cheap(wc: &WorkingContext) -> (NodeRef, NodeRef) {
    let target = *wc.entries().iter().rfind(|e| e.level == 1).unwrap();
    let cheap = candidates(wc)
        .iter()
        .find(|c| c.kind == Move::Collapse)
        .unwrap()
        .node;
    (target, cheap)
}

#[test]
fn nodes_a_move_made_stay_frozen_for_the_cooldown() {
    let mut wc = grown();
    let cooldown = 3;
    let mut alloc = Allocator::new(FocusConfig {
        max_moves: 8,
        margin: 0.0,
        cooldown,
    });
    let (target, cheap) = target_and_cheap(&wc);
    let s = scores(
        &wc,
        [-1.0, -3.0],
        &[(target, [5.0, -3.0]), (cheap, [-1.0, -0.5])],
    );
    assert!(alloc.step(&mut wc, &s).unwrap() >= 2);
    let raw = target.children(4)[0];
    let parent = cheap.parent(4);
    assert!(wc.entries().contains(&raw) && wc.entries().contains(&parent));
    let traded = wc.clone();
    // Now the scores ask to undo both moves: expand the new parent, paid for by collapsing
    // the block just expanded. Both nodes are frozen until the cooldown ends.
    let undo = |wc: &WorkingContext| {
        scores(
            wc,
            [-1.0, -3.0],
            &[(parent, [10.0, -3.0]), (raw, [-1.0, 10.0])],
        )
    };
    for step in 2..=cooldown {
        let s = undo(&wc);
        assert_eq!(alloc.step(&mut wc, &s).unwrap(), 0, "step {step}");
        assert_eq!(wc, traded, "step {step}");
    }
    let s = undo(&wc);
    assert!(
        alloc.step(&mut wc, &s).unwrap() >= 2,
        "after the cooldown the trade is allowed"
    );
    wc.check().unwrap();
    assert!(!wc.entries().contains(&parent));
}

#[test]
fn new_tokens_are_made_room_for_by_collapses() {
    let mut wc = grown();
    let mut alloc = Allocator::new(FocusConfig::default());
    for step in 0..20 {
        wc.append(3);
        assert!(
            wc.used() > 16,
            "step {step}: the new tokens overflow the budget"
        );
        let s = scores(&wc, [-1.0, -0.5], &[]);
        alloc.step(&mut wc, &s).unwrap();
        wc.check().unwrap();
        alloc.record(&wc);
    }
    let st = alloc.stats();
    assert_eq!(st.steps, 20);
    assert!(st.collapses > 0 && st.expansions == 0, "{st:?}");
    assert!(st.utilisation() > 0.5 && st.utilisation() <= 1.0, "{st:?}");
    assert!(st.reads.iter().sum::<u64>() > 0, "{st:?}");
    // Scores that do not fit the entries are an error naming both counts.
    let err = alloc.step(&mut wc, &[[0.0, 0.0]]).unwrap_err().to_string();
    assert!(err.contains("1 score pairs"), "{err}");
}
