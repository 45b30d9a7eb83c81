#!/usr/bin/env python3
"""Builds the parity fixtures under fixtures/parity/ (run through `cargo xtask fixtures parity`).

For each case a tiny random-weight Hugging Face model is built with non-default settings, saved
with `save_pretrained` (config.json + safetensors, one case sharded), and run on fixed inputs.
`reference.safetensors` holds the inputs, the Hugging Face logits and hook activations under
TransformerLens names.

Where the activations come from: TransformerLens 2.x models are built from the same config
(`HookedTransformerConfig` written out here) and loaded with TransformerLens's own weight
converters WITHOUT any weight processing (no LayerNorm folding, no centring), so every hook
value is the raw TransformerLens activation. The script checks TransformerLens's logits against
Hugging Face's (max abs diff < 1e-4) before saving. TransformerLens has no sliding-window
attention, so for the Mistral case the activations are Hugging Face's hidden states instead
(`blocks.{l}.hook_resid_pre`, the final `hook_resid_post`), documented in the manifest.

Weights are re-drawn with larger variance than Hugging Face's default init (std 0.02 makes
every path nearly linear): matrices N(0, 0.3²), norm scales 1 + N(0, 0.1²), biases N(0, 0.1²).

Needs a Python with numpy, torch, transformers, transformer_lens, tokenizers, safetensors.
Usage: parity_fixtures.py OUT_DIR [CASE ...]   (only the named cases, e.g. `gemma3`, which
needs no TransformerLens)
"""

import hashlib
import json
import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.set_grad_enabled(False)

VOCAB = 40
BATCH, POS = 2, 7
SEED = 1234


def reinit(model, seed):
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1 and ("norm" in name.lower() or "ln" in name.lower()) and name.endswith(("weight", "gamma")):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        elif p.dim() == 1:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def round_params(model, dtype):
    """Rounds the parameters (not buffers such as rotary frequencies) to `dtype`: the fixture
    stores them in `dtype` and the references are computed from exactly those values."""
    for p in model.parameters():
        p.copy_(p.to(dtype).to(torch.float32))


def inputs(seed, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (BATCH, POS), generator=g)


def tl_cache(tl_model, ids, **kw):
    logits, cache = tl_model.run_with_cache(ids, **kw)
    acts = {}
    for name, t in cache.items():
        if name in ("hook_tokens",) or name.endswith("hook_full_embed"):
            continue
        acts[name] = t.detach().float().contiguous()
    return logits, acts


def check(name, a, b, mask=None, tol=1e-4):
    if mask is not None:
        a = a[mask.bool()]
        b = b[mask.bool()]
    d = (a.float() - b.float()).abs().max().item()
    print(f"  {name}: TransformerLens vs Hugging Face max |diff| = {d:.2e} (max |logit| {b.abs().max().item():.1f})")
    if d > tol:
        raise SystemExit(f"{name}: TransformerLens and Hugging Face disagree ({d})")


def load_tl(cfg_kwargs, sd):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**cfg_kwargs)
    model = HookedTransformer(cfg)
    # Some converters leave out the (zero) unembedding bias.
    sd.setdefault("unembed.b_U", torch.zeros(cfg.d_vocab))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith(("IGNORE", "mask", "rotary_sin", "rotary_cos"))]
    if missing or unexpected:
        raise SystemExit(f"TransformerLens state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.eval()
    return model


def gpt2_case():
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    cfg = GPT2Config(n_layer=2, n_embd=16, n_head=4, n_inner=24, vocab_size=VOCAB, n_positions=16,
                     activation_function="gelu_new", layer_norm_epsilon=1e-5,
                     bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).eval()
    reinit(model, 1)
    ids = inputs(11)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding on the second row
    tl = load_tl(dict(n_layers=2, d_model=16, d_head=4, n_heads=4, d_mlp=24, d_vocab=VOCAB, n_ctx=16,
                      act_fn="gelu_new", normalization_type="LN", eps=1e-5,
                      original_architecture="GPT2LMHeadModel", default_prepend_bos=False),
                 convert_gpt2_weights(model, _tl_cfg_stub(2, 16, 4, 4, VOCAB)))
    hf = model(ids, attention_mask=mask).logits
    tl_logits, acts = tl_cache(tl, ids, attention_mask=mask)
    check("gpt2 logits", tl_logits, hf, mask)
    return model, dict(input_ids=ids, attention_mask=mask, logits=hf), acts, "TransformerLens hooks; right-padded second row", None


def _tl_cfg_stub(n_layers, d_model, n_heads, d_head, d_vocab, **extra):
    """The converters read only shape fields of the config."""
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head,
                                   d_vocab=d_vocab, n_ctx=16, act_fn="relu", **extra)


def neox_case(parallel, pct, tied, dtype):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from transformer_lens.pretrained.weight_conversions import convert_neox_weights

    cfg = GPTNeoXConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        vocab_size=VOCAB, max_position_embeddings=16, rotary_pct=pct, rotary_emb_base=500,
                        use_parallel_residual=parallel, tie_word_embeddings=tied, hidden_act="gelu")
    model = GPTNeoXForCausalLM(cfg).eval()
    reinit(model, 2 if parallel else 3)
    if dtype is not None:
        round_params(model, dtype)
    ids = inputs(12)
    rot = int(8 * pct)
    tl_cfg = dict(n_layers=2, d_model=16, d_head=8, n_heads=2, d_mlp=32, d_vocab=VOCAB, n_ctx=16,
                  act_fn="gelu", normalization_type="LN", eps=1e-5, positional_embedding_type="rotary",
                  rotary_dim=rot, rotary_base=500, parallel_attn_mlp=parallel,
                  original_architecture="GPTNeoXForCausalLM", default_prepend_bos=False)
    shim = not hasattr(model, "embed_out")
    if shim:
        # transformers >= 5 calls the head `lm_head` in memory (still `embed_out` on disk).
        model.embed_out = model.lm_head
    sd = convert_neox_weights(model, _tl_cfg_stub(2, 16, 2, 8, VOCAB))
    if shim:
        del model.embed_out
    tl = load_tl(tl_cfg, sd)
    hf = model(ids).logits
    tl_logits, acts = tl_cache(tl, ids)
    check("neox logits", tl_logits, hf)
    note = f"TransformerLens hooks; rotary_pct {pct}, parallel_residual {parallel}, tied {tied}"
    return model, dict(input_ids=ids, logits=hf), acts, note, dtype


def llama_case(kind):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights, convert_qwen2_weights

    ids = inputs(13)
    if kind == "llama_gqa":
        cfg = LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=24, vocab_size=VOCAB, max_position_embeddings=16, rms_norm_eps=1e-6,
                          rope_theta=500000.0, tie_word_embeddings=False,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8})
        model = LlamaForCausalLM(cfg).eval()
        extra = dict(use_NTK_by_parts_rope=True, NTK_by_parts_factor=8.0, NTK_by_parts_low_freq_factor=1.0,
                     NTK_by_parts_high_freq_factor=4.0, NTK_original_ctx_len=8, rotary_base=500000,
                     n_key_value_heads=2)
        d_head, convert, note, dtype = 4, convert_llama_weights, "TransformerLens hooks; GQA 4/2, llama3 rope scaling, untied, sharded", None
    elif kind == "llama_tied":
        cfg = LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, head_dim=8,
                          intermediate_size=24, vocab_size=VOCAB, max_position_embeddings=16, rms_norm_eps=1e-5,
                          rope_theta=10000.0, tie_word_embeddings=True, attention_bias=True)
        model = LlamaForCausalLM(cfg).eval()
        extra = dict(rotary_base=10000)
        d_head, convert, note, dtype = 8, convert_llama_weights, "TransformerLens hooks; head_dim 8 ≠ d_model/n_heads, attention biases, tied", None
    else:  # qwen2
        cfg = Qwen2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                          intermediate_size=24, vocab_size=VOCAB, max_position_embeddings=16, rms_norm_eps=1e-6,
                          rope_theta=10000.0, tie_word_embeddings=True)
        model = Qwen2ForCausalLM(cfg).eval()
        extra = dict(rotary_base=10000, n_key_value_heads=1)
        d_head, convert, note, dtype = 4, convert_qwen2_weights, "TransformerLens hooks; Qwen2 q/k/v biases, GQA 4/1, tied, bf16 weights", torch.bfloat16
    reinit(model, {"llama_gqa": 4, "llama_tied": 5, "qwen2": 6}[kind])
    if dtype is not None:
        round_params(model, dtype)
    eps = cfg.rms_norm_eps
    tl_cfg = dict(n_layers=2, d_model=16, d_head=d_head, n_heads=4, d_mlp=24, d_vocab=VOCAB, n_ctx=16,
                  act_fn="silu", normalization_type="RMS", eps=eps, positional_embedding_type="rotary",
                  rotary_dim=d_head, gated_mlp=True, final_rms=True,
                  original_architecture="LlamaForCausalLM", default_prepend_bos=False, **extra)
    stub_extra = {k: v for k, v in extra.items() if k == "n_key_value_heads"}
    sd = convert(model, _tl_cfg_stub(2, 16, 4, d_head, VOCAB, d_mlp=24, **stub_extra))
    if kind == "llama_tied":
        # TransformerLens's Llama converter writes zero attention biases: use the real ones.
        for l in range(2):
            a = model.model.layers[l].self_attn
            sd[f"blocks.{l}.attn.b_Q"] = a.q_proj.bias.reshape(4, d_head)
            sd[f"blocks.{l}.attn.b_K"] = a.k_proj.bias.reshape(4, d_head)
            sd[f"blocks.{l}.attn.b_V"] = a.v_proj.bias.reshape(4, d_head)
            sd[f"blocks.{l}.attn.b_O"] = a.o_proj.bias
    tl = load_tl(tl_cfg, sd)
    hf = model(ids).logits
    tl_logits, acts = tl_cache(tl, ids)
    check(f"{kind} logits", tl_logits, hf)
    return model, dict(input_ids=ids, logits=hf), acts, note, dtype


def mistral_case():
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=24, vocab_size=VOCAB, max_position_embeddings=16, sliding_window=3,
                        rope_theta=10000.0, tie_word_embeddings=False)
    model = MistralForCausalLM(cfg).eval()
    reinit(model, 7)
    ids = inputs(14)
    out = model(ids, output_hidden_states=True)
    hs = out.hidden_states  # embeddings, after block 0, after block 1 (final norm applied to the last)
    acts = {"blocks.0.hook_resid_pre": hs[0], "blocks.1.hook_resid_pre": hs[1]}
    # The last hidden state has the final norm applied: record the pre-norm residual instead.
    captured = {}
    h = model.model.layers[1].register_forward_hook(lambda m, i, o: captured.setdefault("post", o[0] if isinstance(o, tuple) else o))
    model(ids)
    h.remove()
    acts["blocks.1.hook_resid_post"] = captured["post"]
    acts = {k: v.detach().float().contiguous() for k, v in acts.items()}
    return model, dict(input_ids=ids, logits=out.logits), acts, "Hugging Face hidden states (TransformerLens has no sliding window); sliding_window 3 over 7 positions", None


def gemma3_case():
    """Gemma 3 with every switch the forward pass has: QK-norms, sandwich norms, GeGLU, √d
    embedding scale, sliding (window 3) and global layers with their own rope bases (linear
    scaling on the global one), query_pre_attn_scalar ≠ head_dim, a final logit soft-cap, and an
    attention soft-cap that transformers' Gemma 3 stores but does not apply (nor does metarep).
    Activations: Hugging Face's hidden states, attention patterns and layer 1's attention and
    MLP outputs (TransformerLens 2.x has no Gemma 3)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                           max_position_embeddings=32, rms_norm_eps=1e-6, rope_theta=1000.0,
                           rope_local_base_freq=100.0, rope_scaling={"rope_type": "linear", "factor": 2.0},
                           query_pre_attn_scalar=6, sliding_window=3,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           attn_logit_softcapping=5.0, final_logit_softcapping=8.0, tie_word_embeddings=True,
                           pad_token_id=0, bos_token_id=2, eos_token_id=1)
    cfg._attn_implementation = "eager"
    model = Gemma3ForCausalLM(cfg).eval()
    reinit(model, 9)
    ids = inputs(16)
    captured = {}

    def keep(name):
        def hook(module, args, output):
            captured[name] = output[0] if isinstance(output, tuple) else output
        return hook

    layers = model.model.layers
    handles = [layers[1].self_attn.register_forward_hook(keep("blocks.1.hook_attn_out")),
               layers[1].mlp.register_forward_hook(keep("blocks.1.hook_mlp_out")),
               layers[2].register_forward_hook(keep("blocks.2.hook_resid_post"))]
    out = model(ids, output_hidden_states=True, output_attentions=True)
    for h in handles:
        h.remove()
    acts = {f"blocks.{l}.hook_resid_pre": out.hidden_states[l] for l in range(3)}
    acts.update({f"blocks.{l}.attn.hook_pattern": out.attentions[l] for l in range(3)})
    acts.update(captured)
    acts = {k: v.detach().float().contiguous() for k, v in acts.items()}
    return model, dict(input_ids=ids, logits=out.logits), acts, "Hugging Face hidden states, patterns and layer-1 sublayer outputs (TransformerLens 2.x has no Gemma 3); sliding_window 3 over 7 positions, logit soft-cap, QK-norms", None


def bert_case():
    from transformers import BertConfig, BertForPreTraining
    from transformer_lens import HookedEncoder, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_bert_weights

    cfg = BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
                     vocab_size=VOCAB, max_position_embeddings=16, type_vocab_size=2, hidden_act="gelu",
                     layer_norm_eps=1e-12)
    model = BertForPreTraining(cfg).eval()
    reinit(model, 8)
    ids = inputs(15)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    tl_cfg = HookedTransformerConfig(n_layers=2, d_model=16, d_head=4, n_heads=4, d_mlp=32, d_vocab=VOCAB,
                                     n_ctx=16, act_fn="gelu", normalization_type="LN", eps=1e-12,
                                     attention_dir="bidirectional", original_architecture="BertForMaskedLM",
                                     d_vocab_out=VOCAB)
    tl = HookedEncoder(tl_cfg)
    sd = convert_bert_weights(model, tl_cfg)
    missing, unexpected = tl.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith(("IGNORE", "mask")) and not m.startswith("nsp_head")]
    if missing or unexpected:
        raise SystemExit(f"TransformerLens BERT state dict mismatch: {missing} {unexpected}")
    tl.eval()
    hf = model(ids, attention_mask=mask, token_type_ids=types)
    tl_logits, cache = tl.run_with_cache(ids, token_type_ids=types, one_zero_attention_mask=mask)
    acts = {k: v.detach().float().contiguous() for k, v in cache.items() if not k.endswith("hook_full_embed")}
    # TransformerLens masks padded keys with finfo.min; metarep uses -inf (same pattern).
    check("bert logits", tl_logits, hf.prediction_logits, mask)
    hidden = model.bert(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    refs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types, logits=hf.prediction_logits,
                hidden=hidden)
    return model, refs, acts, "TransformerLens HookedEncoder hooks; padding mask, token types, pooler + NSP head in checkpoint", None


def tokenizer_case(out):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [
        "The quick brown fox jumps over the lazy dog.",
        "12 + 34 = 46; 123 * 7 = 861.",
        "Hooked transformers cache every activation by name.",
        "Induction heads copy the token after a previous occurrence.",
    ] * 4
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    d = os.path.join(out, "tokenizer")
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    texts = ["The lazy fox caches 861 heads.", "ünïcödé and spaces  twice", "<|endoftext|>12+34"]
    encs = []
    for t in texts:
        e = tok.encode(t)
        encs.append({"text": t, "ids": e.ids, "tokens": e.tokens, "offsets": [list(o) for o in e.offsets],
                     "decoded": tok.decode(e.ids)})
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(encs, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return [os.path.join(d, "tokenizer.json"), os.path.join(d, "reference.json")], "ByteLevel BPE (vocab 300) trained by `tokenizers` on a fixed corpus; reference encodings from the Python `tokenizers`"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(SEED)
    cases = {
        "gpt2": gpt2_case,
        "neox_parallel": lambda: neox_case(True, 0.25, False, None),
        "neox_sequential": lambda: neox_case(False, 0.5, True, torch.float16),
        "llama_gqa": lambda: llama_case("llama_gqa"),
        "llama_tied": lambda: llama_case("llama_tied"),
        "qwen2": lambda: llama_case("qwen2"),
        "mistral": mistral_case,
        "gemma3": gemma3_case,
        "bert": bert_case,
    }
    only = sys.argv[2:]
    if only:
        unknown = [c for c in only if c not in cases]
        if unknown:
            raise SystemExit(f"unknown cases {unknown}; known: {list(cases)}")
        cases = {c: cases[c] for c in only}
    manifest = []
    for name, make in cases.items():
        print(name)
        model, refs, acts, note, dtype = make()
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            os.remove(os.path.join(d, f))
        save_model = model.to(dtype) if dtype is not None else model
        shard = "4KB" if name == "llama_gqa" else "100MB"
        save_model.save_pretrained(d, safe_serialization=True, max_shard_size=shard)
        for junk in ("generation_config.json",):
            p = os.path.join(d, junk)
            if os.path.exists(p):
                os.remove(p)
        tensors = {k: v.detach().clone().contiguous() for k, v in refs.items()}
        # Layer 1's hooks and those outside the blocks (layer 0 runs the same code; keeping one
        # block keeps the fixtures small).
        tensors.update({f"act.{k}": v.clone() for k, v in acts.items() if not k.startswith("blocks.0.")})
        save_file(tensors, os.path.join(d, "reference.safetensors"))
        for f in sorted(os.listdir(d)):
            manifest.append({"file": f"parity/{name}/{f}", "sha256": sha256(os.path.join(d, f)), "how": note})
    if not only:
        files, note = tokenizer_case(out)
        for f in files:
            manifest.append({"file": os.path.relpath(f, os.path.dirname(out)), "sha256": sha256(f), "how": note})
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"script": "xtask/python/parity_fixtures.py", "files": manifest}, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
