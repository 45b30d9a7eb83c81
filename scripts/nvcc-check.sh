#!/usr/bin/env bash
# nvcc for the CUDA compile gate (scripts/cuda-check.sh), given to candle-kernels' build script
# as NVCC. The gate runs `cargo check`, which links nothing, so the objects and the static
# library that build script compiles for linking (candle's MoE and GGUF matmul kernels, about
# ten CPU minutes of nvcc on 2 cores, read only by a link) are written empty here. Every other
# call goes to the real nvcc: candle's PTX modules, which the crate embeds and `cargo check`
# compiles against, are built for real; metarep-kernels calls $CUDA_HOME/bin/nvcc itself.
# `scripts/device-check.sh` builds and links everything with the real compiler.
set -euo pipefail
out="" compile=0 archive=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    -c) compile=1 ;;
    --lib | -lib) archive=1 ;;
    -o) out="${args[i + 1]:-}" ;;
  esac
done
if [ -n "$out" ] && [ "$compile" = 1 ]; then
  : > "$out"
elif [ -n "$out" ] && [ "$archive" = 1 ]; then
  printf '!<arch>\n' > "$out"
else
  exec "$CUDA_HOME/bin/nvcc" "$@"
fi
