//! Headless Chromium for the tests of pages (the results gallery, SAE dashboards): render to
//! PNG or dump the DOM, and decode the PNG.

use std::path::Path;
use std::process::{Command, Output};

/// Runs headless chromium on `page` with `args`; fails clearly without chromium.
pub fn chromium(args: &[String], page: &Path, profile: &Path) -> Output {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run chromium ({e}): needs Debian chromium: apt-get install -y chromium")
        });
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Decodes a PNG: its pixels' bytes (8 bits a sample) and bytes per pixel.
fn decode_png(path: &Path) -> (Vec<u8>, usize) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut decoder = png::Decoder::new(file);
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().unwrap();
    let mut px = vec![0; reader.output_buffer_size().unwrap()];
    let size = reader.next_frame(&mut px).unwrap().buffer_size();
    px.truncate(size);
    (px, reader.output_color_type().0.samples())
}

/// Renders `page` to the PNG `shot` (1200 × 2000) and checks the picture is not empty and not
/// one colour.
pub fn screenshot(page: &Path, shot: &Path, profile: &Path) {
    let args = [
        format!("--screenshot={}", shot.display()),
        "--window-size=1200,2000".into(),
    ];
    chromium(&args, page, profile);
    let (px, bpp) = decode_png(shot);
    assert!(!px.is_empty(), "empty screenshot of {}", page.display());
    assert!(
        px.chunks(bpp).any(|p| p != &px[..bpp]),
        "the screenshot of {} is one colour",
        page.display()
    );
}

/// The DOM of `page` after it loaded.
pub fn dom(page: &Path, profile: &Path) -> String {
    let args = [
        "--dump-dom".to_string(),
        "--virtual-time-budget=5000".to_string(),
    ];
    String::from_utf8(chromium(&args, page, profile).stdout).unwrap()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use candle_core::{DType, Device};
    use metarep_model::{HookPoint, HookedTransformer, LoadOptions};
    use metarep_sae::dashboard::{build_dashboard, render_page, DashboardSettings};
    use metarep_sae::{Architecture, Sae, SaeConfig};

    use super::*;

    #[test]
    #[ignore = "needs Debian chromium (apt-get install -y chromium), cargo xtask fixtures smollm2 \
                and cargo xtask fixtures corpus"]
    fn chromium_renders_an_sae_dashboard_of_smollm2_on_real_text() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let gguf = root.join("target/fixtures/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        let model =
            HookedTransformer::from_pretrained(gguf.to_str().unwrap(), &LoadOptions::default())
                .unwrap();
        let corpus =
            std::fs::read_to_string(root.join("target/fixtures/corpus/heldout.tsv")).unwrap();
        let text: String = corpus
            .lines()
            .take(10)
            .filter_map(|l| l.splitn(3, '\t').nth(2))
            .collect();
        let ids = model.tokenizer().unwrap().encode(&text, false).unwrap().ids;
        let contexts: Vec<Vec<u32>> = ids.chunks_exact(40).take(4).map(<[u32]>::to_vec).collect();
        let cfg = SaeConfig::new(576, 2, Architecture::TopK { k: 8 }).unwrap();
        let sae = Sae::new(cfg, 0, DType::F32, &Device::Cpu).unwrap();
        let settings = DashboardSettings {
            top_latents: 3,
            random_latents: 2,
            examples: 3,
            ..Default::default()
        };
        let page =
            build_dashboard(&model, &sae, HookPoint::ResidPost(15), &contexts, &settings).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let (file, profile) = (tmp.path().join("page.html"), tmp.path().join("profile"));
        std::fs::write(&file, render_page(&page)).unwrap();

        screenshot(&file, &tmp.path().join("shot.png"), &profile);
        let dom = dom(&file, &profile);
        assert_eq!(dom.matches("<section class=\"latent\"").count(), 5);
        assert_eq!(dom.matches("<svg class=\"histogram\"").count(), 5);
        assert!(dom.matches("<rect").count() >= 5, "histogram bars missing");
        assert!(
            dom.matches("<span class=\"tok").count() >= 5,
            "no shaded tokens"
        );
        assert_eq!(dom.matches("<table class=\"logits promoted\">").count(), 5);
        assert_eq!(
            dom.matches("<table class=\"logits suppressed\">").count(),
            5
        );
    }
}
