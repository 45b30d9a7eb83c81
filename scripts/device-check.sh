#!/usr/bin/env bash
# The GPU checks of metarep in one run: build with CUDA, run the GPU tests (tests/gpu.rs, all
# `#[ignore]`d elsewhere) and the GPU benchmark (`cargo xtask bench gpu`, written to
# results/bench/gpu.json). Sized to finish in under 8 minutes on an H100/H200-class GPU.
#
#   bash scripts/device-check.sh                   # a machine with cargo, nvcc and a GPU
#   bash scripts/device-check.sh --build-only DIR  # here: build, strip and xz the binaries into DIR
#   bash scripts/device-check.sh --prebuilt DIR    # a GPU machine without Rust: run DIR's binaries
#
# Building needs the CUDA compiler (e.g. the nvidia-cuda-nvcc, -nvvm, -crt, -cccl and -runtime
# 13.0 wheels, with CUDA_HOME pointing at their nvidia/cu13 folder) and, to link without a
# driver, a libcuda.so there (the driver's, or a stub). Running needs the driver and the CUDA
# 13 runtime libraries (cuBLAS, cuRAND, cudart): the script looks for them next to PyTorch's
# and CUDA's usual folders. The PyTorch references run with $METAREP_PYTHON (default python3).
# PARTS (default "tests cli xtask bench") picks what runs; PROFILE=1 adds a kernel-time summary.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
mode=build
dir=""
case "${1:-}" in
  "") ;;
  --build-only) mode=build-only; dir=${2:?--build-only DIR} ;;
  --prebuilt) mode=prebuilt; dir=${2:?--prebuilt DIR} ;;
  *) echo "usage: $0 [--build-only DIR | --prebuilt DIR]" >&2; exit 2 ;;
esac
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}

if [ "$mode" != prebuilt ]; then
  set -e
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
  cargo build --release --features cuda -p xtask --features xtask/cuda
  cargo build --release -p metarep-cli --features metarep-cli/cuda
  tests=$(cargo test --release --features cuda --test gpu --no-run 2>&1 |
    grep -oE '\(([^()]*/deps/gpu-[0-9a-f]+)\)' | tr -d '()' | tail -1)
  xtask=$CARGO_TARGET_DIR/release/xtask
  cli=$CARGO_TARGET_DIR/release/metarep
  set +e
  if [ "$mode" = build-only ]; then
    mkdir -p "$dir"
    for pair in "$xtask:xtask" "$tests:gpu-tests" "$cli:metarep"; do
      cp "${pair%%:*}" "$dir/${pair##*:}" && strip "$dir/${pair##*:}" &&
        xz -f -9 -T0 "$dir/${pair##*:}" || exit 1
    done
    echo "$root" > "$dir/built-in"   # the checkout path compiled into the binaries
    ls -la "$dir"
    exit 0
  fi
else
  for f in xtask gpu-tests metarep; do
    if [ -f "$dir/$f.xz" ]; then
      python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" \
        "$dir/$f.xz" "/tmp/$f" || exit 1
    else
      cp "$dir/$f" "/tmp/$f" || exit 1
    fi
    chmod +x "/tmp/$f"
  done
  xtask=/tmp/xtask
  tests=/tmp/gpu-tests
  cli=/tmp/metarep
  # The binaries find fixtures and Python scripts under the checkout they were built in.
  built=$(cat "$dir/built-in")
  if [ "$built" != "$root" ] && [ ! -e "$built" ]; then
    mkdir -p "$(dirname "$built")" && ln -s "$root" "$built"
  fi
  libs=""
  for lib in libcublas.so.13 libcurand.so.10 libcudart.so.13; do
    found=$(find /usr/local/cuda*/ /opt /usr/lib -name "$lib" 2>/dev/null | head -1)
    [ -n "$found" ] && libs="$libs:$(dirname "$found")"
  done
  export LD_LIBRARY_PATH="${libs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  ldd "$xtask" | grep -E "cuda|cublas|curand|not found"
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
status=0
parts=" ${PARTS:-tests cli xtask bench} "
want() { [[ "$parts" == *" $1 "* ]]; }
if want tests; then
echo "== GPU tests"
start=$(date +%s)
timeout 240 "$tests" --ignored --test-threads=1 --nocapture || status=1
echo "   ($(( $(date +%s) - start )) s)"
fi
if want cli; then
echo "== the CLI on the GPU: metarep forward --device cuda:0 against --device cpu"
for dev in cpu cuda:0; do
  "$cli" forward --device "$dev" --model fixtures/parity/llama_gqa --tokens 1,5,9,13,2,7 \
    --cache 'blocks.*.hook_resid_post' --out "/tmp/forward-${dev%%:*}.safetensors" || status=1
done
python3 - <<'PY' || status=1
from safetensors.numpy import load_file
a, b = load_file("/tmp/forward-cpu.safetensors"), load_file("/tmp/forward-cuda.safetensors")
worst = max(float(abs(a[k].astype("float64") - b[k].astype("float64")).max()) for k in a)
print(f"   {len(a)} tensors, max |cpu - cuda| = {worst:.2e}")
assert a.keys() == b.keys() and worst <= 1e-4
PY
fi
if want xtask; then
echo "== xtask targets on the GPU (--set device=cuda:0)"
start=$(date +%s)
# fig6 and fig17 train their LATs on the GPU; fig11 runs the second-order pipeline there and
# fig18 decodes with its fixture models there; fig9 trains and scores its ground-truth SAEs
# there. (fig7 and fig8 take the device too but run ≈ 1.5 and 2 minutes on the CPU: left out to
# keep the check short.)
for fig in fig1 fig10 fig11 fig18 fig17 fig6 fig9; do
  timeout 150 "$xtask" reproduce "$fig" --quick --check --set device=cuda:0 --out /tmp/xtask-gpu \
    > "/tmp/$fig.log" 2>&1 || { status=1; grep -v "^ *[0-9]*: " "/tmp/$fig.log" | tail -20; }
  grep -E "^== |pass =" "/tmp/$fig.log"
done
# fig12 shortened to a smoke run (its byte LM trains on the CPU, then GistNet, the ΔNLL
# measurements, LensNet and the streams run on the GPU); no --check: the budget is cut.
timeout 150 "$xtask" reproduce fig12 --quick --set device=cuda:0 --out /tmp/xtask-gpu \
  --set bytes.steps=100 --set train.steps=100 --set eval_windows=64 --set multi.windows=32 \
  --set stream.docs=1 --set stream.max_tokens=1024 --set lens.states=40 \
  --set lens.held_states=20 --set lens.train.steps=50 > /tmp/fig12.log 2>&1 ||
  { status=1; grep -v "^ *[0-9]*: " /tmp/fig12.log | tail -20; }
grep -E "^== |gistnet +ratio|pass =" /tmp/fig12.log
refusal=$("$xtask" reproduce fig3 --quick --set device=cuda:0 --out /tmp/xtask-gpu 2>&1)
if grep -q "runs on the CPU only" <<< "$refusal"; then
  echo "   fig3 refuses the GPU, naming itself"
else
  status=1; echo "   fig3 did not refuse --set device=cuda:0: $refusal"
fi
echo "   ($(( $(date +%s) - start )) s)"
fi
if want bench; then
echo "== GPU benchmark"
start=$(date +%s)
METAREP_PYTHON=${METAREP_PYTHON:-python3} timeout 300 "$xtask" bench gpu --set device=cuda:0 || status=1
echo "   ($(( $(date +%s) - start )) s)"
fi
if [ "${PROFILE:-0}" = 1 ]; then
  # Where the time goes: kernel durations of one plain and one cached forward, then of SAE
  # steps, summed by kernel name (Nsight Compute, clocks left alone).
  ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  for part in forward sae; do
    echo "== kernel time by name: $part (ncu)"
    timeout 200 "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv \
      --log-file "/tmp/ncu-$part.csv" "$xtask" bench gpu --set device=cuda:0 --set parts=$part \
      --set reps=1 --set torch=0 --out /tmp/ncu-results >/dev/null 2>&1
    python3 scripts/ncu_summary.py "/tmp/ncu-$part.csv" --top 25
  done
fi
exit $status
