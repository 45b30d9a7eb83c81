#!/usr/bin/env python3
"""Reference outputs of a GGUF model for metarep's parity tests (`cargo xtask fixtures
smollm2-reference`).

- Token ids of a fixed text suite from llama.cpp (llama-cpp-python, vocab only, no BOS, special
  tokens parsed): the tokenizer metarep rebuilds from the GGUF metadata must give the same ids.
- On those ids (plain English and code; BOS first, as the models are trained), transformers' GGUF loader (every tensor dequantized
  to f32) gives the logits: the top 10 values and ids at every position, and two full rows, and
  the hidden states (`blocks.{l}.hook_resid_pre` of every layer, and the final norm's output) at
  the last position.
- llama.cpp's own mean next-token NLL on the English sentence (`logits_all=True`), as a sanity
  check of the whole pipeline (llama.cpp quantizes activations, so its logits differ slightly).

Writes OUT.json (ids, top-k, NLLs) and OUT.safetensors (full rows, hidden states).
Needs numpy, torch, transformers (< 5), accelerate, gguf, safetensors and llama-cpp-python.

Usage: gguf_reference.py MODEL.gguf OUT_PREFIX
"""

import json
import math
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file

TEXTS = [
    "The capital of France is Paris. The capital of Germany is",
    "In 1969, 3 astronauts flew 384400 km to the Moon; 2 of them walked on it.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "spaces:   three, tabs:\t\ttwo, newlines:\n\n\nthree",
    "Ünïcödé: naïve café, 東京, Привет, 🙂 and ∑ x² ≤ 1",
    "<|im_start|>user\nHi!<|im_end|>",
    "<start_of_turn>user\nWrite   a <b>poem</b>.<end_of_turn>\n\n\n\n",
]
# Texts the logits and hidden states are recorded on (indices into TEXTS).
SCORED = [0, 2]
TOP = 10


def main():
    model_path, out = sys.argv[1], sys.argv[2]
    from llama_cpp import Llama

    vocab = Llama(model_path=model_path, vocab_only=True, verbose=False)
    ids = [vocab.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in TEXTS]
    bos = vocab.token_bos()
    scored_ids = {i: [bos] + ids[i] for i in SCORED}
    del vocab

    full = Llama(model_path=model_path, logits_all=True, n_ctx=512, n_threads=2, verbose=False)
    en = scored_ids[0]
    full.eval(en)
    scores = np.array(full.scores[: len(en)], dtype=np.float64)
    nll_llama = float(np.mean([
        -(scores[p, en[p + 1]] - np.log(np.exp(scores[p] - scores[p].max()).sum()) - scores[p].max())
        for p in range(len(en) - 1)
    ]))
    del full

    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(model_path) or ".",
        gguf_file=os.path.basename(model_path),
        torch_dtype=torch.float32,
    )
    model.eval()
    record = {
        "model": os.path.basename(model_path),
        "texts": TEXTS,
        "ids": ids,
        "scored": SCORED,
        "scored_ids": {str(i): v for i, v in scored_ids.items()},
        "top": TOP,
        "nll_llama_cpp": nll_llama,
        "logits": {},
    }
    tensors = {}
    for i in SCORED:
        x = torch.tensor([scored_ids[i]])
        o = model(x, output_hidden_states=True)
        logits = o.logits[0].double()
        lp = torch.log_softmax(logits, -1)
        nll = float(-lp[torch.arange(len(scored_ids[i]) - 1), x[0, 1:]].mean())
        vals, idx = logits.topk(TOP, dim=-1)
        record["logits"][str(i)] = {
            "top_values": vals.tolist(),
            "top_ids": idx.tolist(),
            "nll_transformers": nll,
        }
        tensors[f"text{i}.logits.first"] = o.logits[0, 0].numpy().astype(np.float32)
        tensors[f"text{i}.logits.last"] = o.logits[0, -1].numpy().astype(np.float32)
        hs = o.hidden_states  # embeddings, then each layer's output (the last one normed)
        for layer in range(len(hs) - 1):
            tensors[f"text{i}.resid_pre.{layer}"] = hs[layer][0, -1].numpy().astype(np.float32)
        tensors[f"text{i}.final_normed"] = hs[-1][0, -1].numpy().astype(np.float32)
        print(f"text {i}: {len(scored_ids[i])} tokens, NLL transformers {nll:.4f}")
    print(f"llama.cpp NLL on text 0: {nll_llama:.4f}")
    with open(out + ".json", "w") as f:
        json.dump(record, f, indent=1, ensure_ascii=False)
        f.write("\n")
    save_file(tensors, out + ".safetensors")


if __name__ == "__main__":
    main()
