//! Staged ablations on the induction-2l fixture: the layer-1 induction heads zeroed one after
//! another (cumulatively), then mean-ablated, with the loss, accuracy and entropy changes on the
//! second repeat of `[BOS, s, s]` sequences.
//!
//! ```sh
//! cargo run --release --example staged_ablation
//! ```
//!
//! The same configs run from the command line: `metarep ablate --model fixtures/induction-2l
//! --config ablations.toml --tokens eval.ids`.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use metarep::circuits::ablation::{run_ablations, AblationConfig, AblationKind};
use metarep::circuits::detectors::repeated_tokens;
use metarep::core::rng::seeded;
use metarep::model::predictions::EvalSet;
use metarep::model::{HookedTransformer, LoadOptions};

const CONFIG: &str = r#"
cumulative = true
[[stages]]
name = "L1H0"
kind = "zero"
components = ["L1H0"]
[[stages]]
name = "+ L1H1"
kind = "zero"
components = ["L1H1"]
[[stages]]
name = "+ L1H3"
kind = "zero"
components = ["L1H3"]
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/induction-2l");
    let model = HookedTransformer::from_dir(&dir, &LoadOptions::default())?;
    let (batch, len) = (32, 25);
    let tokens = repeated_tokens(&mut seeded(1), batch, len, model.config().d_vocab)?;
    let reference = repeated_tokens(&mut seeded(2), batch, len, model.config().d_vocab)?;
    // Count only the predictions inside the second repeat.
    let mask: Vec<f32> = (0..batch)
        .flat_map(|_| (0..2 * len).map(|p| f32::from(p > len)))
        .collect();
    let eval = EvalSet {
        tokens,
        mask: Some(Tensor::from_vec(mask, (batch, 2 * len), &Device::Cpu)?),
        alternative: None,
    };
    let mut config: AblationConfig = toml::from_str(CONFIG)?;
    for kind in [AblationKind::Zero, AblationKind::Mean] {
        for s in &mut config.stages {
            s.kind = kind;
        }
        let r = run_ablations(&model, &config, &eval, Some(&reference))?;
        println!(
            "{kind:?} ablation, cumulative (clean second-repeat loss {:.3}):",
            r.clean.loss
        );
        for s in &r.stages {
            println!(
                "  {:<8} loss {:.3} ({:+.3})  accuracy {:.3} ({:+.3})  entropy {:+.3}",
                s.name,
                s.ablated.loss,
                s.delta.loss,
                s.ablated.accuracy,
                s.delta.accuracy,
                s.delta.entropy
            );
        }
    }
    Ok(())
}
