//! What the examples on SmolLM2 share: where its GGUF file is.

use std::path::PathBuf;

/// The GGUF file named by the first command-line argument, else the fixture
/// `target/fixtures/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`; an error naming the fetch command
/// when it is missing.
pub fn smollm2_gguf() -> Result<PathBuf, String> {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/fixtures/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if !path.is_file() {
        return Err(format!(
            "no SmolLM2 GGUF at {}: run `cargo xtask fixtures smollm2` first",
            path.display()
        ));
    }
    Ok(path)
}
