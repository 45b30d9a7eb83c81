#!/usr/bin/env python3
"""TransformerLens side of `cargo xtask bench forward`: a GPT-2-small-shaped HookedTransformer
(12 layers, d_model 768, 12 heads, d_mlp 3072, vocab 50257, n_ctx 1024, random weights), f32 on
the CPU with as many torch threads as the Rust side uses, batch 4 x 128 tokens. Times (median
over reps, after one warm-up) a plain forward, run_with_cache of every hook, and run_with_cache
of hook_resid_post only; prints one JSON object.

Needs a Python with torch and transformer_lens 2.x.
Usage: bench_forward_tl.py THREADS REPS
"""

import json
import sys
import time

import torch
import transformer_lens
from transformer_lens import HookedTransformer, HookedTransformerConfig


def median_ms(f, reps):
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    threads, reps = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
                                  n_ctx=1024, act_fn="gelu_new", normalization_type="LN", dtype=torch.float32,
                                  default_prepend_bos=False)
    model = HookedTransformer(cfg).eval()
    tokens = torch.randint(0, 50257, (4, 128))
    plain = median_ms(lambda: model(tokens), reps)
    cache_all = median_ms(lambda: model.run_with_cache(tokens), reps)
    resid = median_ms(lambda: model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post")), reps)
    print(json.dumps({
        "torch": torch.__version__,
        "transformer_lens": getattr(transformer_lens, "__version__", "2.x"),
        "threads": torch.get_num_threads(),
        "plain_ms": plain, "cache_all_ms": cache_all, "cache_resid_post_ms": resid,
    }))


if __name__ == "__main__":
    main()
