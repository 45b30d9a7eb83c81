//! The tokenizer wrapper reproduces the Python `tokenizers` encodings of the fixture tokenizer
//! (ids, tokens, offsets, decoding) and pads batches on the right.

use crate::common;

use candle_core::Device;
use metarep_model::Tokenizer;

#[test]
fn encodings_match_python_tokenizers() {
    let dir = common::fixtures().join("parity/tokenizer");
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let cases = reference.as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let enc = tok.encode(text, true).unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let tokens: Vec<String> = serde_json::from_value(case["tokens"].clone()).unwrap();
        assert_eq!(enc.ids, ids, "{text}");
        assert_eq!(enc.tokens, tokens, "{text}");
        // Python reports character offsets; ours are byte offsets into the same text.
        let char_offsets: Vec<(usize, usize)> =
            serde_json::from_value(case["offsets"].clone()).unwrap();
        let byte_at = |c: usize| {
            text.char_indices()
                .nth(c)
                .map(|(b, _)| b)
                .unwrap_or(text.len())
        };
        let expected: Vec<(usize, usize)> = char_offsets
            .iter()
            .map(|&(s, e)| (byte_at(s), byte_at(e)))
            .collect();
        assert_eq!(enc.offsets, expected, "{text}");
        // Python decodes with skip_special_tokens = True by default.
        assert_eq!(
            tok.decode(&enc.ids, true).unwrap(),
            case["decoded"].as_str().unwrap()
        );
    }
}

#[test]
fn batches_are_right_padded_with_a_mask() {
    let tok =
        Tokenizer::from_file(&common::fixtures().join("parity/tokenizer/tokenizer.json")).unwrap();
    let batch = tok
        .batch(&["The lazy fox", "12"], true, &Device::Cpu)
        .unwrap();
    let ids = batch.input.tokens.to_vec2::<u32>().unwrap();
    let mask = batch
        .input
        .attention_mask
        .as_ref()
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let (long, short) = (batch.lengths[0], batch.lengths[1]);
    assert!(long > short && ids[0].len() == long);
    assert_eq!(mask[1], [vec![1; short], vec![0; long - short]].concat());
    assert_eq!(ids[1][short..], vec![tok.pad_id(); long - short][..]);
    assert_eq!(tok.pad_id(), tok.token_to_id("<|endoftext|>").unwrap());
    assert!(tok.batch(&[], true, &Device::Cpu).is_err());
}
