//! `sae`, the store row: TopK SAE training end to end on real activations — SmolLM2-135M's
//! `blocks.15.hook_resid_post` (d_in 576) over the corpus's first training documents, captured
//! once to an activation store (f16, not timed) and exported to a NumPy `.npy` file (f16, the
//! same rows). metarep reads shuffled batches from the store ([`StoreSource`]) and trains;
//! PyTorch reads shuffled batches from the `.npy` through a memory map (`bench_sae.py
//! --memmap`) and trains the same model. Each timed step includes its batch's read and decode;
//! both files were just written, so both read from the page cache.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use metarep_capture::{capture, store_dir, CaptureSpec, StoreReader, TokenDataset};
use metarep_eval::corpus::{head_chars, read_split, Split};
use metarep_model::{HookPoint, HookedTransformer, LoadOptions};
use metarep_sae::source::ActivationSource;
use metarep_sae::{Architecture, Sae, SaeConfig, SaeTrainer, StoreSource};

use super::sae::{time_steps, train_config, Side, BATCH, EXPANSION, K};
use crate::error::BoxError;
use crate::fig14::write_ids;
use crate::fixtures::gguf::smollm2_file;

/// The captured block (the middle of SmolLM2's 30).
const LAYER: usize = 15;
/// Tokens per context.
const N_CTX: usize = 128;
/// Characters of training documents read (≈ 65 000 tokens: 16 batches of rows).
const CHARS: usize = 300_000;
/// Rows in the shuffle buffer of the store reader.
const BUFFER_ROWS: usize = 1 << 15;

/// The captured activations: the store directory and the `.npy` export of the same rows.
pub struct Captured {
    /// The hook's store directory.
    pub store: PathBuf,
    /// The `.npy` file (f16 `[rows, d_in]`).
    pub npy: PathBuf,
    /// Rows stored.
    pub rows: usize,
    /// Row width.
    pub d_in: usize,
}

/// Captures the activations under `dir` (fresh) and exports them; an error names a missing
/// fixture and the command that fetches it.
pub fn prepare(dir: &Path) -> Result<Captured, BoxError> {
    let root = crate::fixtures::repo_root();
    let gguf = smollm2_file(&root)?;
    let docs = read_split(&root.join("target/fixtures/corpus"), Split::Train)?;
    let model = HookedTransformer::from_gguf(&gguf, &LoadOptions::default())?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let ids = dir.join("train.ids");
    write_ids(&model, head_chars(&docs, CHARS), &ids)?;
    let data = TokenDataset::load(&ids, None, N_CTX)?;
    let hook = HookPoint::ResidPost(LAYER);
    let spec = CaptureSpec {
        hooks: vec![hook],
        dtype: "f16".into(),
        shard_tokens: 1 << 14,
        batch_contexts: 8,
        model_name: "SmolLM2-135M-Instruct (GGUF Q4_1)".into(),
        max_contexts: None,
    };
    let acts = dir.join("acts");
    let report = capture(&model, &data, &acts, &spec, |_, _| {})?;
    println!(
        "  store row: captured {} tokens of blocks.{LAYER}.hook_resid_post in {:.0} s (not timed)",
        report.tokens_total, report.seconds
    );
    let store = store_dir(&acts, hook);
    let npy = dir.join("acts.npy");
    let (rows, d_in) = export_npy(&store, &npy)?;
    Ok(Captured {
        store,
        npy,
        rows,
        d_in,
    })
}

/// Writes every row of the store in `store` to `path` as a NumPy `.npy` (version 1.0, `<f2`,
/// C order); returns its shape.
fn export_npy(store: &Path, path: &Path) -> Result<(usize, usize), BoxError> {
    let reader = StoreReader::open(store, 0, 1)?;
    let d_in = reader.d_in();
    let shards = reader.meta().shards.len();
    let mut body = Vec::new();
    let mut rows = 0;
    for i in 0..shards {
        let shard = reader.load_shard(i)?;
        rows += shard.dim(0)?;
        let values = shard
            .to_dtype(DType::F16)?
            .flatten_all()?
            .to_vec1::<half::f16>()?;
        body.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    let mut header =
        format!("{{'descr': '<f2', 'fortran_order': False, 'shape': ({rows}, {d_in}), }}");
    // Magic (6) + version (2) + header length (2) + header, padded with spaces and ended by a
    // newline to a multiple of 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    f.write_all(&body)?;
    f.flush()?;
    Ok((rows, d_in))
}

/// metarep's side: `STEPS` timed steps (after one warm-up), each reading its batch from the
/// store and training on it.
pub fn time_metarep(c: &Captured) -> Result<Side, BoxError> {
    metarep_core::memory::reset_peak();
    let arch = Architecture::TopK { k: K };
    let config = SaeConfig::new(c.d_in, EXPANSION, arch)?;
    let mut sae = Sae::new(config, 0, DType::F32, &Device::Cpu)?;
    let mut trainer = SaeTrainer::new(&sae, &train_config(arch))?;
    let mut source = StoreSource::open(&c.store, 0, BUFFER_ROWS)?;
    source.start_epoch(0)?;
    let mut epoch = 0;
    time_steps(BATCH, |step| {
        let batch = match source.next_batch(BATCH)? {
            Some(b) if b.x.dim(0)? == BATCH => b,
            _ => {
                epoch += 1;
                source.start_epoch(epoch)?;
                source
                    .next_batch(BATCH)?
                    .ok_or("the store holds fewer rows than one batch")?
            }
        };
        trainer.step(&mut sae, &batch, step)?;
        Ok(())
    })
}
