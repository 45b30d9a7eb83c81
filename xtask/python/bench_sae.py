"""Plain PyTorch reference for `cargo xtask bench sae`: one training step of a TopK or
ReLU + L1 sparse autoencoder (the same model, loss and optimiser as metarep-sae's), timed.

Usage: python bench_sae.py {topk,relu} --d-in 768 --expansion 16 --batch 4096 --k 32
       [--steps 6] [--warmup 2] [--threads N] [--memmap ACTS.npy] [--device cuda:0]
Prints one JSON object: median step wall and CPU time, tokens/s, peak RSS of this process
(ru_maxrss), and on a GPU the peak of torch's GPU allocations. Every step ends with
`loss.item()`, which waits for the GPU, so wall times cover the whole step there too.

The model: W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec; the encoder sees x − b_dec.
TopK: top-k pre-activations per row, ReLU, scattered into a dense [batch, d_sae] code, decoded
by a dense matmul (SAELens's formulation); decoder rows renormalised after each step.
ReLU + L1: ReLU(pre); loss = Σ‖x̂ − x‖² / batch + λ Σ f_i ‖W_dec,i‖ / batch (decoder norms
folded into the penalty). Optimiser: torch.optim.Adam with default settings (β = 0.9, 0.999,
ε = 1e-8), lr 3e-4.

Data: one fixed random batch, or with --memmap a `[rows, d_in]` .npy file (e.g. f16) opened as a
NumPy memory map; each step then reads its batch (the next rows of a seeded permutation, read in
sorted order) and converts it to float32 inside the timed step.
"""

import argparse
import json
import resource
import statistics
import time

import numpy as np
import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("arch", choices=["topk", "relu"])
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--expansion", type=int, default=16)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--l1", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--memmap", default=None)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_default_device(a.device)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d_in, d_sae = a.d_in, a.d_in * a.expansion

    w_dec = torch.randn(d_sae, d_in)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    if a.arch == "relu":
        w_dec *= 0.1
    W_dec = torch.nn.Parameter(w_dec)
    W_enc = torch.nn.Parameter(w_dec.t().clone().contiguous())
    b_enc = torch.nn.Parameter(torch.zeros(d_sae))
    b_dec = torch.nn.Parameter(torch.zeros(d_in))
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=3e-4)
    if a.memmap is None:
        fixed = torch.randn(a.batch, d_in)
        next_batch = lambda: fixed
    else:
        mm = np.load(a.memmap, mmap_mode="r")
        if mm.ndim != 2 or mm.shape[1] != d_in or mm.shape[0] < a.batch:
            raise SystemExit(f"{a.memmap}: shape {mm.shape}, expected [≥ {a.batch}, {d_in}]")
        order = np.random.default_rng(0).permutation(mm.shape[0])
        cursor = [0]

        def next_batch():
            if cursor[0] + a.batch > len(order):
                cursor[0] = 0
            idx = np.sort(order[cursor[0]:cursor[0] + a.batch])
            cursor[0] += a.batch
            return torch.from_numpy(np.asarray(mm[idx], dtype=np.float32)).to(a.device)

    def step():
        x = next_batch()
        pre = (x - b_dec) @ W_enc + b_enc
        if a.arch == "topk":
            top = pre.topk(a.k, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
            recon = acts @ W_dec + b_dec
            loss = (recon - x).pow(2).sum(-1).mean()
        else:
            acts = pre.relu()
            recon = acts @ W_dec + b_dec
            l1 = (acts * W_dec.norm(dim=1)).sum(-1).mean()
            loss = (recon - x).pow(2).sum(-1).mean() + a.l1 * l1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if a.arch == "topk":
            with torch.no_grad():
                W_dec.div_(W_dec.norm(dim=1, keepdim=True))
        return loss.item()

    for _ in range(a.warmup):
        step()
    times, cpu = [], []
    for _ in range(a.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    ms = statistics.median(times) * 1e3
    print(json.dumps({
        "arch": a.arch,
        "step_ms": ms,
        "step_cpu_ms": statistics.median(cpu) * 1e3,
        "tokens_per_s": a.batch / (ms / 1e3),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": a.device,
        "peak_gpu_mb": (torch.cuda.max_memory_allocated(a.device) / 2**20
                        if a.device.startswith("cuda") else None),
    }))


if __name__ == "__main__":
    main()
