//! Feeds arbitrary bytes to every parser of the on-disk format: segment files, node records,
//! the commit log and its entries, `commits.end`, index checkpoints and telemetry batches. None
//! may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metarep_gist_tree::codec;

fuzz_target!(|data: &[u8]| {
    let _ = codec::parse_segment(data);
    let _ = codec::parse_log(data);
    let _ = codec::parse_checkpoint(data);
    let _ = codec::decode_node(data);
    let _ = codec::LogEntry::decode(data);
    let _ = codec::Checkpoint::decode_body(data);
    let _ = codec::decode_telemetry(data);
    let _ = codec::scan_frames(data, 0);
    let meta = metarep_gist_tree::TreeMeta {
        format: 1,
        tree_id: 0,
        config: metarep_gist_tree::TreeConfig::default(),
    };
    let _ = metarep_gist_tree::log_end::LogEnd::decode(data, &meta, 0);
});
