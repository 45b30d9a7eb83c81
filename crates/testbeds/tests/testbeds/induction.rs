//! The induction-2l training data: a random segment repeated at random places.

use metarep_testbeds::induction::InductionSpec;

#[test]
fn induction_training_sequences_repeat_a_segment_at_random_places() {
    let spec = InductionSpec {
        batch: 50,
        ..InductionSpec::default()
    };
    let t = spec.batch_tokens(7, 0).unwrap();
    assert_eq!(t.dims(), &[50, spec.n_ctx + 1]);
    assert_eq!(
        t.to_vec2::<u32>().unwrap(),
        spec.batch_tokens(7, 0).unwrap().to_vec2::<u32>().unwrap()
    );
    let mut starts = std::collections::BTreeSet::new();
    for row in t.to_vec2::<u32>().unwrap() {
        assert_eq!(row[0], 0);
        // Some window of min_segment tokens occurs twice without overlapping.
        let w = spec.min_segment;
        let first = (1..row.len() - w)
            .find(|&i| (i + w..=row.len() - w).any(|j| row[i..i + w] == row[j..j + w]))
            .expect("no repeated segment");
        starts.insert(first);
    }
    assert!(
        starts.len() > 10,
        "repeats always start at the same places: {starts:?}"
    );
    let bad = InductionSpec {
        min_segment: 40,
        ..InductionSpec::default()
    };
    assert!(bad.batch_tokens(0, 0).is_err());
}
