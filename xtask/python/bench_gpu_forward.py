"""PyTorch eager reference for `cargo xtask bench gpu`: a GPT-2-small-shaped transformer
(12 layers, d_model 768, 12 heads, d_mlp 3072, vocab 50257, tied unembedding, random weights)
written as plain PyTorch modules, run forward in bf16 on a CUDA device, timed.

Usage: python bench_gpu_forward.py --batch 32 --pos 1024 [--reps 10] [--warmup 3] [--device cuda:0]
Prints one JSON object: median forward ms and tokens/s of the eager model (explicit attention:
scores, causal mask, softmax, mixing — as TransformerLens and transformers' "eager" attention
compute it) and, for context, of the same model with torch's fused
scaled_dot_product_attention ("sdpa").
"""

import argparse
import json
import math
import statistics

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d, h, m, sdpa):
        super().__init__()
        self.h, self.sdpa = h, sdpa
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, m), nn.Linear(m, d)

    def forward(self, x, mask):
        b, p, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.view(b, p, self.h, d // self.h).transpose(1, 2) for t in (q, k, v))
        if self.sdpa:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.h)
            scores = scores.masked_fill(mask, float("-inf"))
            z = scores.softmax(dim=-1) @ v
        x = x + self.out(z.transpose(1, 2).reshape(b, p, d))
        return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))


class Gpt2(nn.Module):
    def __init__(self, sdpa, layers=12, d=768, h=12, m=3072, vocab=50257, ctx=1024):
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, h, m, sdpa) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, tokens):
        p = tokens.shape[1]
        mask = torch.ones(p, p, dtype=torch.bool, device=tokens.device).triu(1)
        x = self.embed(tokens) + self.pos(torch.arange(p, device=tokens.device))
        for blk in self.blocks:
            x = blk(x, mask)
        return self.ln_f(x) @ self.embed.weight.t()


def time_model(model, tokens, reps, warmup):
    with torch.inference_mode():
        for _ in range(warmup):
            model(tokens)
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(tokens)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times), times


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--pos", type=int, default=1024)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda:0")
    a = p.parse_args()
    torch.manual_seed(0)
    tokens = torch.randint(0, 50257, (a.batch, a.pos), device=a.device)
    out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(a.device)}
    for name, sdpa in [("eager", False), ("sdpa", True)]:
        model = Gpt2(sdpa).to(device=a.device, dtype=torch.bfloat16).eval()
        torch.cuda.reset_peak_memory_stats(a.device)
        ms, times = time_model(model, tokens, a.reps, a.warmup)
        out[name] = {
            "ms": ms,
            "times_ms": times,
            "tokens_per_s": a.batch * a.pos / (ms / 1e3),
            "peak_gpu_mb": torch.cuda.max_memory_allocated(a.device) / 2**20,
        }
        del model
        torch.cuda.empty_cache()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
