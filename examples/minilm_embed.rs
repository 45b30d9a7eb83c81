//! Embed sentences with the real all-MiniLM-L6-v2 (a 6-layer BERT) through metarep's hooked
//! BERT and compare with the reference embeddings recorded by sentence-transformers
//! (`fixtures/minilm/reference.json`): cosine ≥ 0.9999 for every sentence.
//!
//! Set-up (once, outside git): `cargo xtask fixtures minilm`.
//! Run: `cargo run --release --example minilm_embed [-- "another sentence" ...]`

use std::path::PathBuf;

use candle_core::Device;
use metarep::model::pooling::Pooling;
use metarep::model::{HookedTransformer, LoadOptions};

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var_os("METAREP_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/fixtures/all-MiniLM-L6-v2"));
    if !dir.join("model.safetensors").is_file() {
        return Err(format!(
            "no model at {}: run `cargo xtask fixtures minilm` first",
            dir.display()
        )
        .into());
    }
    let model = HookedTransformer::from_dir(&dir, &LoadOptions::default())?;
    let tok = model
        .tokenizer()
        .ok_or("the model directory has no tokenizer.json")?;
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("fixtures/minilm/reference.json"),
    )?)?;
    let mut sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone())?;
    let expected: Vec<Vec<f32>> = serde_json::from_value(reference["embeddings"].clone())?;
    sentences.extend(std::env::args().skip(1));
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let batch = tok.batch(&texts, true, &Device::Cpu)?;
    let emb = model
        .sentence_embeddings(&batch.input, Pooling::Mean, true)?
        .to_vec2::<f32>()?;

    println!(
        "all-MiniLM-L6-v2 ({} layers, d_model {}), mean pooling + L2 norm",
        model.config().n_layers,
        model.config().d_model
    );
    let mut worst = 1f32;
    for (i, (text, e)) in sentences.iter().zip(&emb).enumerate() {
        match expected.get(i) {
            Some(want) => {
                let c = cosine(e, want);
                worst = worst.min(c);
                println!("  cos(metarep, sentence-transformers) = {c:.7}  {text}");
            }
            None => println!("  (no reference)                           {text}"),
        }
    }
    println!("\nsimilarity matrix:");
    for a in &emb {
        let row: Vec<String> = emb
            .iter()
            .map(|b| format!("{:5.2}", cosine(a, b)))
            .collect();
        println!("  {}", row.join(" "));
    }
    println!("\nworst cosine to the reference: {worst:.7} (target ≥ 0.9999)");
    if worst < 0.9999 {
        return Err("embeddings differ from the reference".into());
    }
    Ok(())
}
