//! Hugging Face checkpoint layouts: tensor names and shapes of each family, converted into
//! [`Weights`]. A missing tensor, a tensor of the wrong shape, or a tensor the architecture does
//! not use (other than known buffers such as GPT-2's causal-mask `attn.bias`) is an error naming it.

use candle_core::Tensor;

use crate::checkpoint_tensors::CheckpointTensors;
use crate::config::{Family, LmHead, ModelConfig};
use crate::error::Result;
use crate::weights::{AttnWeights, BlockWeights, MlmHeadWeights, MlpWeights, NormWeights, Weights};

/// Converts the checkpoint in `st` for `cfg` (BERT: the head and pooler flags of `cfg` are set
/// from which tensors exist), then checks no tensor is left over.
pub fn load_weights(cfg: &mut ModelConfig, st: &mut CheckpointTensors) -> Result<Weights> {
    match cfg.family {
        Family::Gpt2 => gpt2(cfg, st),
        Family::GptNeox => neox(cfg, st),
        Family::Llama | Family::Gemma3 => llama(cfg, st),
        Family::Bert => bert(cfg, st),
        Family::Metarep => Weights::from_tl_tensors(cfg, st),
    }
}

/// The first of `prefixes` under which `probe` exists (checkpoints saved from a bare model or
/// from a model with a head differ by a prefix).
fn prefix_of(st: &CheckpointTensors, prefixes: &[&'static str], probe: &str) -> &'static str {
    prefixes
        .iter()
        .find(|p| st.contains(&format!("{p}{probe}")))
        .copied()
        .unwrap_or(prefixes[0])
}

/// An HF `nn.Linear` weight `[out, in]`, returned as `[in, out]`.
fn linear_t(st: &mut CheckpointTensors, name: &str, out: usize, inp: usize) -> Result<Tensor> {
    Ok(st.take(name, &[out, inp])?.t()?.contiguous()?)
}

/// A LayerNorm's `weight`/`bias` (or the old `gamma`/`beta`).
fn layer_norm(st: &mut CheckpointTensors, p: &str, d: usize, bias: bool) -> Result<NormWeights> {
    let w = st.take_any(&[format!("{p}.weight"), format!("{p}.gamma")], &[d])?;
    let b = if bias {
        Some(st.take_any(&[format!("{p}.bias"), format!("{p}.beta")], &[d])?)
    } else {
        None
    };
    Ok(NormWeights { w, b })
}

/// An RMSNorm weight; Gemma stores `w` of the `x · (1 + w)` form, returned as `1 + w`.
fn rms_norm(st: &mut CheckpointTensors, name: &str, d: usize, gemma: bool) -> Result<NormWeights> {
    let w = st.take(&format!("{name}.weight"), &[d])?;
    let w = if gemma { (w + 1.0)? } else { w };
    Ok(NormWeights { w, b: None })
}

fn untied_unembed(
    cfg: &ModelConfig,
    st: &mut CheckpointTensors,
    name: &str,
) -> Result<Option<Tensor>> {
    if cfg.tied_embeddings {
        st.skip(name);
        Ok(None)
    } else {
        linear_t(st, name, cfg.d_vocab, cfg.d_model).map(Some)
    }
}

fn gpt2(cfg: &ModelConfig, st: &mut CheckpointTensors) -> Result<Weights> {
    let p = prefix_of(st, &["", "transformer."], "wte.weight");
    let d = cfg.d_model;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let b = format!("{p}h.{l}");
        // Conv1D weights are stored [in, out]: q, k, v are column blocks of c_attn.
        let c_attn = st.take(&format!("{b}.attn.c_attn.weight"), &[d, 3 * d])?;
        let c_bias = st.take(&format!("{b}.attn.c_attn.bias"), &[3 * d])?;
        let col = |i: usize| -> Result<Tensor> { Ok(c_attn.narrow(1, i * d, d)?.contiguous()?) };
        let bias = |i: usize| -> Result<Option<Tensor>> {
            Ok(Some(c_bias.narrow(0, i * d, d)?.contiguous()?))
        };
        let attn = AttnWeights {
            w_q: col(0)?,
            w_k: col(1)?,
            w_v: col(2)?,
            w_o: st.take(&format!("{b}.attn.c_proj.weight"), &[d, d])?,
            b_q: bias(0)?,
            b_k: bias(1)?,
            b_v: bias(2)?,
            b_o: Some(st.take(&format!("{b}.attn.c_proj.bias"), &[d])?),
            q_ln: None,
            k_ln: None,
        };
        let mlp = MlpWeights {
            w_in: st.take(&format!("{b}.mlp.c_fc.weight"), &[d, cfg.d_mlp])?,
            b_in: Some(st.take(&format!("{b}.mlp.c_fc.bias"), &[cfg.d_mlp])?),
            w_gate: None,
            w_out: st.take(&format!("{b}.mlp.c_proj.weight"), &[cfg.d_mlp, d])?,
            b_out: Some(st.take(&format!("{b}.mlp.c_proj.bias"), &[d])?),
        };
        blocks.push(BlockWeights {
            ln1: layer_norm(st, &format!("{b}.ln_1"), d, true)?,
            attn,
            ln2: Some(layer_norm(st, &format!("{b}.ln_2"), d, true)?),
            mlp: Some(mlp),
            ln1_post: None,
            ln2_post: None,
        });
    }
    let w = Weights {
        w_e: st.take(&format!("{p}wte.weight"), &[cfg.d_vocab, d])?,
        w_pos: Some(st.take(&format!("{p}wpe.weight"), &[cfg.n_ctx, d])?),
        w_token_type: None,
        embed_ln: None,
        blocks,
        ln_final: Some(layer_norm(st, &format!("{p}ln_f"), d, true)?),
        mlm_head: None,
        pooler: None,
        w_u: untied_unembed(cfg, st, "lm_head.weight")?,
        b_u: None,
    };
    // The causal-mask buffers `attn.bias` / `attn.masked_bias` of older checkpoints.
    st.finish(|n| n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias"))?;
    Ok(w)
}

fn neox(cfg: &ModelConfig, st: &mut CheckpointTensors) -> Result<Weights> {
    let (d, h, dh) = (cfg.d_model, cfg.n_heads, cfg.d_head);
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let b = format!("gpt_neox.layers.{l}");
        // query_key_value is [3·d, d] with output rows ordered (head, q|k|v, d_head).
        let qkv = st.take(
            &format!("{b}.attention.query_key_value.weight"),
            &[3 * h * dh, d],
        )?;
        let qkv = qkv.reshape((h, 3, dh, d))?;
        let part = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(1, i, 1)?
                .reshape((h * dh, d))?
                .t()?
                .contiguous()?)
        };
        let (bq, bk, bv) = if cfg.qkv_bias {
            let bias = st
                .take(
                    &format!("{b}.attention.query_key_value.bias"),
                    &[3 * h * dh],
                )?
                .reshape((h, 3, dh))?;
            let part = |i: usize| -> Result<Option<Tensor>> {
                Ok(Some(bias.narrow(1, i, 1)?.reshape(h * dh)?))
            };
            (part(0)?, part(1)?, part(2)?)
        } else {
            (None, None, None)
        };
        let attn = AttnWeights {
            w_q: part(0)?,
            w_k: part(1)?,
            w_v: part(2)?,
            w_o: linear_t(st, &format!("{b}.attention.dense.weight"), d, h * dh)?,
            b_q: bq,
            b_k: bk,
            b_v: bv,
            b_o: if cfg.out_bias {
                Some(st.take(&format!("{b}.attention.dense.bias"), &[d])?)
            } else {
                None
            },
            q_ln: None,
            k_ln: None,
        };
        let mlp = MlpWeights {
            w_in: linear_t(st, &format!("{b}.mlp.dense_h_to_4h.weight"), cfg.d_mlp, d)?,
            b_in: Some(st.take(&format!("{b}.mlp.dense_h_to_4h.bias"), &[cfg.d_mlp])?),
            w_gate: None,
            w_out: linear_t(st, &format!("{b}.mlp.dense_4h_to_h.weight"), d, cfg.d_mlp)?,
            b_out: Some(st.take(&format!("{b}.mlp.dense_4h_to_h.bias"), &[d])?),
        };
        blocks.push(BlockWeights {
            ln1: layer_norm(st, &format!("{b}.input_layernorm"), d, true)?,
            attn,
            ln2: Some(layer_norm(
                st,
                &format!("{b}.post_attention_layernorm"),
                d,
                true,
            )?),
            mlp: Some(mlp),
            ln1_post: None,
            ln2_post: None,
        });
    }
    let w = Weights {
        w_e: st.take("gpt_neox.embed_in.weight", &[cfg.d_vocab, d])?,
        w_pos: None,
        w_token_type: None,
        embed_ln: None,
        blocks,
        ln_final: Some(layer_norm(st, "gpt_neox.final_layer_norm", d, true)?),
        mlm_head: None,
        pooler: None,
        w_u: untied_unembed(cfg, st, "embed_out.weight")?,
        b_u: None,
    };
    st.finish(|n| {
        n.ends_with(".attention.bias")
            || n.ends_with(".attention.masked_bias")
            || n.ends_with("rotary_emb.inv_freq")
    })?;
    Ok(w)
}

/// Llama, Mistral, Qwen2 and Gemma 3 (the same names; Gemma adds QK-norms and output norms).
fn llama(cfg: &ModelConfig, st: &mut CheckpointTensors) -> Result<Weights> {
    let gemma = cfg.family == Family::Gemma3;
    let (d, h, hk, dh, m) = (
        cfg.d_model,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.d_head,
        cfg.d_mlp,
    );
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let b = format!("model.layers.{l}");
        let a = format!("{b}.self_attn");
        let opt_bias = |st: &mut CheckpointTensors,
                        name: String,
                        n: usize,
                        on: bool|
         -> Result<Option<Tensor>> {
            if on {
                st.take(&name, &[n]).map(Some)
            } else {
                Ok(None)
            }
        };
        let attn = AttnWeights {
            w_q: linear_t(st, &format!("{a}.q_proj.weight"), h * dh, d)?,
            w_k: linear_t(st, &format!("{a}.k_proj.weight"), hk * dh, d)?,
            w_v: linear_t(st, &format!("{a}.v_proj.weight"), hk * dh, d)?,
            w_o: linear_t(st, &format!("{a}.o_proj.weight"), d, h * dh)?,
            b_q: opt_bias(st, format!("{a}.q_proj.bias"), h * dh, cfg.qkv_bias)?,
            b_k: opt_bias(st, format!("{a}.k_proj.bias"), hk * dh, cfg.qkv_bias)?,
            b_v: opt_bias(st, format!("{a}.v_proj.bias"), hk * dh, cfg.qkv_bias)?,
            b_o: opt_bias(st, format!("{a}.o_proj.bias"), d, cfg.out_bias)?,
            q_ln: cfg
                .qk_norm
                .then(|| rms_norm(st, &format!("{a}.q_norm"), dh, gemma))
                .transpose()?,
            k_ln: cfg
                .qk_norm
                .then(|| rms_norm(st, &format!("{a}.k_norm"), dh, gemma))
                .transpose()?,
        };
        let mlp = MlpWeights {
            w_in: linear_t(st, &format!("{b}.mlp.up_proj.weight"), m, d)?,
            b_in: opt_bias(st, format!("{b}.mlp.up_proj.bias"), m, cfg.mlp_bias)?,
            w_gate: Some(linear_t(st, &format!("{b}.mlp.gate_proj.weight"), m, d)?),
            w_out: linear_t(st, &format!("{b}.mlp.down_proj.weight"), d, m)?,
            b_out: opt_bias(st, format!("{b}.mlp.down_proj.bias"), d, cfg.mlp_bias)?,
        };
        if cfg.mlp_bias {
            // SwiGLU's gate bias has no TransformerLens counterpart; refuse rather than drop it.
            if st.contains(&format!("{b}.mlp.gate_proj.bias")) {
                return Err(crate::Error::Unsupported(format!(
                    "{b}.mlp.gate_proj.bias: gate biases are not implemented"
                )));
            }
        }
        // Gemma's `post_attention_layernorm` normalises the attention output (`ln1_post`);
        // Llama's is the norm before the MLP.
        let (ln2_name, ln1_post, ln2_post) = if gemma {
            (
                "pre_feedforward_layernorm",
                Some(rms_norm(
                    st,
                    &format!("{b}.post_attention_layernorm"),
                    d,
                    true,
                )?),
                Some(rms_norm(
                    st,
                    &format!("{b}.post_feedforward_layernorm"),
                    d,
                    true,
                )?),
            )
        } else {
            ("post_attention_layernorm", None, None)
        };
        blocks.push(BlockWeights {
            ln1: rms_norm(st, &format!("{b}.input_layernorm"), d, gemma)?,
            attn,
            ln2: Some(rms_norm(st, &format!("{b}.{ln2_name}"), d, gemma)?),
            mlp: Some(mlp),
            ln1_post,
            ln2_post,
        });
    }
    let w = Weights {
        w_e: st.take("model.embed_tokens.weight", &[cfg.d_vocab, d])?,
        w_pos: None,
        w_token_type: None,
        embed_ln: None,
        blocks,
        ln_final: Some(rms_norm(st, "model.norm", d, gemma)?),
        mlm_head: None,
        pooler: None,
        w_u: untied_unembed(cfg, st, "lm_head.weight")?,
        b_u: None,
    };
    st.finish(|n| n.ends_with("rotary_emb.inv_freq"))?;
    Ok(w)
}

fn bert(cfg: &mut ModelConfig, st: &mut CheckpointTensors) -> Result<Weights> {
    let p = prefix_of(st, &["", "bert."], "embeddings.word_embeddings.weight");
    let d = cfg.d_model;
    let m = cfg.d_mlp;
    cfg.lm_head = if st.contains("cls.predictions.transform.dense.weight") {
        LmHead::BertMlm
    } else {
        LmHead::None
    };
    cfg.unembed_bias = cfg.lm_head == LmHead::BertMlm;
    cfg.pooler = st.contains(&format!("{p}pooler.dense.weight"));
    let e = format!("{p}embeddings");
    let w_e = st.take(&format!("{e}.word_embeddings.weight"), &[cfg.d_vocab, d])?;
    let w_pos = st.take(&format!("{e}.position_embeddings.weight"), &[cfg.n_ctx, d])?;
    let w_tt = st.take(
        &format!("{e}.token_type_embeddings.weight"),
        &[cfg.n_token_types, d],
    )?;
    let embed_ln = layer_norm(st, &format!("{e}.LayerNorm"), d, true)?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let b = format!("{p}encoder.layer.{l}");
        let s = format!("{b}.attention.self");
        let bias =
            |st: &mut CheckpointTensors, name: String, n: usize| st.take(&name, &[n]).map(Some);
        let attn = AttnWeights {
            w_q: linear_t(st, &format!("{s}.query.weight"), d, d)?,
            w_k: linear_t(st, &format!("{s}.key.weight"), d, d)?,
            w_v: linear_t(st, &format!("{s}.value.weight"), d, d)?,
            w_o: linear_t(st, &format!("{b}.attention.output.dense.weight"), d, d)?,
            b_q: bias(st, format!("{s}.query.bias"), d)?,
            b_k: bias(st, format!("{s}.key.bias"), d)?,
            b_v: bias(st, format!("{s}.value.bias"), d)?,
            b_o: bias(st, format!("{b}.attention.output.dense.bias"), d)?,
            q_ln: None,
            k_ln: None,
        };
        let mlp = MlpWeights {
            w_in: linear_t(st, &format!("{b}.intermediate.dense.weight"), m, d)?,
            b_in: bias(st, format!("{b}.intermediate.dense.bias"), m)?,
            w_gate: None,
            w_out: linear_t(st, &format!("{b}.output.dense.weight"), d, m)?,
            b_out: bias(st, format!("{b}.output.dense.bias"), d)?,
        };
        blocks.push(BlockWeights {
            ln1: layer_norm(st, &format!("{b}.attention.output.LayerNorm"), d, true)?,
            attn,
            ln2: Some(layer_norm(st, &format!("{b}.output.LayerNorm"), d, true)?),
            mlp: Some(mlp),
            ln1_post: None,
            ln2_post: None,
        });
    }
    let pooler = if cfg.pooler {
        let w = linear_t(st, &format!("{p}pooler.dense.weight"), d, d)?;
        Some((w, st.take(&format!("{p}pooler.dense.bias"), &[d])?))
    } else {
        None
    };
    let (mlm_head, b_u) = if cfg.lm_head == LmHead::BertMlm {
        let t = "cls.predictions.transform";
        let head = MlmHeadWeights {
            w: linear_t(st, &format!("{t}.dense.weight"), d, d)?,
            b: st.take(&format!("{t}.dense.bias"), &[d])?,
            ln: layer_norm(st, &format!("{t}.LayerNorm"), d, true)?,
        };
        let b_u = st.take_any(
            &[
                "cls.predictions.bias".to_string(),
                "cls.predictions.decoder.bias".to_string(),
            ],
            &[cfg.d_vocab],
        )?;
        // The decoder weight is tied to the word embeddings; its bias duplicates `bias`.
        st.skip("cls.predictions.decoder.weight");
        st.skip("cls.predictions.decoder.bias");
        (Some(head), Some(b_u))
    } else {
        (None, None)
    };
    let w = Weights {
        w_e,
        w_pos: Some(w_pos),
        w_token_type: Some(w_tt),
        embed_ln: Some(embed_ln),
        blocks,
        ln_final: None,
        mlm_head,
        pooler,
        w_u: None,
        b_u,
    };
    // `position_ids` is a buffer; `cls.seq_relationship` is the next-sentence head.
    st.finish(|n| {
        n.ends_with("embeddings.position_ids") || n.starts_with("cls.seq_relationship.")
    })?;
    Ok(w)
}
