#!/usr/bin/env python3
"""transformers side of `cargo xtask bench real_forward`: a GGUF checkpoint (SmolLM2-135M) loaded
by transformers' own GGUF loader (every tensor dequantized to f32), f32 on the CPU with as many
torch threads as the Rust side uses.

It serves timing requests so that the Rust side can interleave its own runs with these ones (the
machine is shared; interleaving makes both sides see the same load). Protocol, one JSON object a
line:

- stdin, first line: {"forward_ids": [[...], ...], "prompt": [...], "new_tokens": N} — the token
  ids of the batched forward pass and of the generation prompt (the same ids the Rust side uses);
- stdout: {"ready": true, ...} once the model is loaded and both workloads have run once (warm-up):
  versions, threads, torch's CPU capability, load time, f32 weight bytes, the EOS id, resident
  set;
- then per request line on stdin: `forward` → {"ms": wall time of `model(ids)`};
  `generate` → {"ms", "first_token_ms", "tokens"}: greedy `model.generate` with the KV cache,
  exactly N new tokens (`min_new_tokens = max_new_tokens = N`, so EOS cannot end it early);
  `quit` → {"peak_rss_mb": ru_maxrss of this process} and exit.

Needs torch, transformers (< 5), gguf and accelerate:
    pip install torch "transformers<5" gguf accelerate
Usage: bench_real_forward.py MODEL.gguf THREADS
"""

import json
import os
import resource
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def rss_mb(field):
    """VmRSS / VmHWM of this process in MB (Linux), None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class FirstToken:
    """A `generate` streamer that records when the first new token arrives (the first `put` is
    the prompt, the second the first new token)."""

    def __init__(self):
        self.calls = 0
        self.first = None

    def put(self, _value):
        self.calls += 1
        if self.calls == 2:
            self.first = time.perf_counter()

    def end(self):
        pass


def main():
    model_path, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    request = json.loads(sys.stdin.readline())
    forward_ids = torch.tensor(request["forward_ids"], dtype=torch.long)
    prompt = torch.tensor([request["prompt"]], dtype=torch.long)
    new_tokens = int(request["new_tokens"])

    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(os.path.abspath(model_path)),
        gguf_file=os.path.basename(model_path),
        torch_dtype=torch.float32,
    )
    model.eval()
    load_s = time.perf_counter() - t
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rss_after_load = rss_mb("VmRSS")
    eos = model.generation_config.eos_token_id
    pad = eos[0] if isinstance(eos, list) else eos

    def forward():
        t = time.perf_counter()
        model(forward_ids)
        return {"ms": (time.perf_counter() - t) * 1e3}

    def generate():
        streamer = FirstToken()
        t = time.perf_counter()
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad,
            streamer=streamer,
        )
        ms = (time.perf_counter() - t) * 1e3
        tokens = out[0, prompt.shape[1]:].tolist()
        if len(tokens) != new_tokens:
            raise RuntimeError(f"generate produced {len(tokens)} new tokens, expected {new_tokens}")
        return {"ms": ms, "first_token_ms": (streamer.first - t) * 1e3, "tokens": tokens}

    requests = {"forward": forward, "generate": generate}
    for f in requests.values():
        f()  # warm-up
    print(json.dumps({
        "ready": True,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_s": load_s,
        "weight_bytes": weight_bytes,
        "eos_token_id": pad,
        "rss_after_load_mb": rss_after_load,
        "peak_rss_after_warmup_mb": rss_mb("VmHWM"),
    }), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            break
        print(json.dumps(requests[name]()), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak}), flush=True)


if __name__ == "__main__":
    main()
