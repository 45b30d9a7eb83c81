//! With the `cuda` feature, compiles `src/cuda/kernels.cu` to PTX with `nvcc` (from
//! `$CUDA_HOME/bin`, else the `PATH`) for the virtual architecture `compute_$CUDA_COMPUTE_CAP`
//! (default 80; the driver compiles PTX for newer GPUs when it loads it).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=src/cuda/kernels.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let nvcc = match std::env::var_os("CUDA_HOME") {
        Some(home) => PathBuf::from(home).join("bin").join("nvcc"),
        None => PathBuf::from("nvcc"),
    };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ptx = out.join("metarep_kernels.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("src/cuda/kernels.cu")
        .arg("-o")
        .arg(&ptx)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "{} failed ({s}) compiling src/cuda/kernels.cu",
            nvcc.display()
        ),
        Err(e) => panic!(
            "could not run {} ({e}): the `cuda` feature needs the CUDA compiler \
             (set CUDA_HOME or put nvcc on the PATH)",
            nvcc.display()
        ),
    }
}
