#!/usr/bin/env python3
"""TransformerLens side of `cargo xtask bench forward`: a GPT-2-small-shaped HookedTransformer
(12 layers, d_model 768, 12 heads, d_mlp 3072, vocab 50257, n_ctx 1024, random weights), f32 on
the CPU with as many torch threads as the Rust side uses, batch 4 x 128 tokens.

It serves timing requests so that the Rust side can interleave its own runs with these ones
(the machine is shared; interleaving makes both sides see the same load): after printing a
`ready` JSON line it reads one variant per line from stdin — `plain` (forward), `cache_all`
(run_with_cache of every hook), `cache_resid_post` (run_with_cache of hook_resid_post only) —
runs it once and prints the wall time in milliseconds; `quit` ends it.

Needs a Python with torch and transformer_lens 2.x.
Usage: bench_forward_tl.py THREADS
"""

import json
import sys
import time

import torch
import transformer_lens
from transformer_lens import HookedTransformer, HookedTransformerConfig


def main():
    threads = int(sys.argv[1])
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
                                  n_ctx=1024, act_fn="gelu_new", normalization_type="LN", dtype=torch.float32,
                                  default_prepend_bos=False)
    model = HookedTransformer(cfg).eval()
    tokens = torch.randint(0, 50257, (4, 128))
    variants = {
        "plain": lambda: model(tokens),
        "cache_all": lambda: model.run_with_cache(tokens),
        "cache_resid_post": lambda: model.run_with_cache(
            tokens, names_filter=lambda n: n.endswith("hook_resid_post")),
    }
    for f in variants.values():
        f()  # warm-up
    print(json.dumps({"ready": True, "torch": torch.__version__,
                      "transformer_lens": getattr(transformer_lens, "__version__", "2.x"),
                      "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            break
        t = time.perf_counter()
        variants[name]()
        print(f"{(time.perf_counter() - t) * 1e3:.3f}", flush=True)


if __name__ == "__main__":
    main()
