#!/usr/bin/env bash
# The CUDA compile gate: `cargo check` of the whole workspace with `--features cuda` (every
# target, the GPU tests included), with NVIDIA's CUDA 13.0 compiler from PyPI. No GPU or driver
# is needed: nothing is linked. candle-kernels compiles its PTX for compute capability 9.0
# (H100/H200); the compiler wheels go to target/cuda-toolkit, the build to target/cuda-check.
# Its static library of MoE/GGUF kernels, which only a link reads, is not compiled (NVCC =
# scripts/nvcc-check.sh, which says why); every PTX module is.
set -euo pipefail
cd "$(dirname "$0")/.."
toolkit=$PWD/target/cuda-toolkit
if [ ! -x "$toolkit/nvidia/cu13/bin/nvcc" ]; then
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$toolkit" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96
fi
export CUDA_HOME=$toolkit/nvidia/cu13
export PATH=$CUDA_HOME/bin:$PATH
export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000 NVCC=$PWD/scripts/nvcc-check.sh
CARGO_TARGET_DIR=${CUDA_CHECK_TARGET:-target/cuda-check} cargo check --release --workspace \
  --all-targets --features cuda,metarep-cli/cuda,xtask/cuda
