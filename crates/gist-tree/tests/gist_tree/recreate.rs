//! A tree directory deleted and created again in the same process is a new, working tree.

use metarep_gist_tree::{FsyncPolicy, MeanPool, Provenance, TreeConfig, Writer, WriterOptions};

#[test]
fn a_tree_recreated_where_one_was_deleted_works() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("tree");
    for round in 0..3 {
        let cfg = TreeConfig {
            block: 32,
            width: 8,
            ..TreeConfig::default()
        };
        let opts = WriterOptions {
            fsync: FsyncPolicy::EveryCommit,
            ..WriterOptions::default()
        };
        let pool = Box::new(MeanPool::new(8, 0).unwrap());
        let mut w = Writer::create(&dir, cfg, opts, pool).unwrap();
        for _ in 0..3 {
            let tokens: Vec<u32> = (0..4096).collect();
            w.append(&tokens, &Provenance::default()).unwrap();
            w.commit().unwrap();
        }
        assert_eq!(w.token_count(), 3 * 4096, "round {round}");
        w.close().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
