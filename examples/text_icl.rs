//! Numeric-label text ICL on the text-regression fixture (seed 0): a few held-out prompts with
//! the model's greedy answer next to the true label and the ridge oracle's, then the mean
//! absolute error by number of in-context examples.
//!
//! ```sh
//! cargo run --release --example text_icl
//! ```
//!
//! The fixtures are built by `cargo xtask fixtures text-regression`; `cargo xtask reproduce
//! fig18` runs the same evaluation on all three seeds against more baselines.

use std::path::PathBuf;

use metarep::core::rng::seeded;
use metarep::eval::baselines::{Predictor, Ridge};
use metarep::model::{HookedTransformer, LoadOptions};
use metarep::testbeds::text_regression::{answer, TextRegressionSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/text-regression/seed-0");
    let model = HookedTransformer::from_dir(&dir, &LoadOptions::default())?;
    let spec: TextRegressionSpec =
        serde_json::from_str(&std::fs::read_to_string(dir.join("text-regression.json"))?)?;
    for n in [1, 4, 16] {
        let prompts = spec.prompt_spec(n);
        let items = spec.prompts(n, 200, &mut seeded(n as u64))?;
        let examples: Vec<_> = items.iter().map(|(_, e)| e.clone()).collect();
        let answers = answer(&model, &examples, spec.decimals, 100)?;
        let ridge = Ridge {
            lambda: spec.noise * spec.noise * spec.dim as f64 / n as f64,
        };
        let (mut model_err, mut ridge_err, mut parsed) = (0.0, 0.0, 0);
        for (i, ((task, e), a)) in items.iter().zip(&answers).enumerate() {
            let t = prompts.as_printed(task);
            let oracle = ridge.predict(&t.x_support, &t.y_support, &t.x_query)?[0];
            ridge_err += (oracle - e.value).abs();
            if let Some(v) = a.value {
                model_err += (v - e.value).abs();
                parsed += 1;
            }
            if i < 2 {
                println!("{}⟨{}⟩", e.prompt, a.text);
                println!("  true{}, ridge {oracle:.2}\n", e.answer);
            }
        }
        println!(
            "n = {n}: model MAE {:.3} ({parsed} of {} answers parse), ridge MAE {:.3}\n",
            model_err / parsed.max(1) as f64,
            items.len(),
            ridge_err / items.len() as f64
        );
    }
    Ok(())
}
