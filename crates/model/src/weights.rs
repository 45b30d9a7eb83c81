//! Model weights in the layout the forward pass uses, with conversion to and from
//! TransformerLens state-dict names and shapes (metarep's own checkpoint format).
//!
//! Internal layout (what [`Weights::named_tensors`] lists, used by the trainer's checkpoints):
//! projections are stored `[in, out]` so that `x W` is one matmul; the attention projections are
//! flattened over heads (`w_q: [d_model, n_heads·d_head]`, `w_o: [n_heads·d_head, d_model]`),
//! head `h` owning channels `h·d_head .. (h+1)·d_head`. TransformerLens shapes
//! (`W_Q: [n_heads, d_model, d_head]`, ...) come from the accessors on
//! [`crate::HookedTransformer`] and from [`Weights::to_tl_state_dict`].

use std::collections::HashMap;

use candle_core::Tensor;

use crate::checkpoint_tensors::CheckpointTensors;
use crate::config::{LmHead, ModelConfig};
use crate::error::{Error, Result};

/// A normalisation layer's scale `w` and (LayerNorm only) shift `b`, each `[d]`.
#[derive(Debug, Clone)]
pub struct NormWeights {
    /// Scale `[d]`.
    pub w: Tensor,
    /// Shift `[d]` (LayerNorm).
    pub b: Option<Tensor>,
}

/// One attention layer, flattened over heads.
#[derive(Debug, Clone)]
pub struct AttnWeights {
    /// Queries `[d_model, n_heads·d_head]`.
    pub w_q: Tensor,
    /// Keys `[d_model, n_kv_heads·d_head]`.
    pub w_k: Tensor,
    /// Values `[d_model, n_kv_heads·d_head]`.
    pub w_v: Tensor,
    /// Output `[n_heads·d_head, d_model]`.
    pub w_o: Tensor,
    /// Query bias `[n_heads·d_head]`.
    pub b_q: Option<Tensor>,
    /// Key bias `[n_kv_heads·d_head]`.
    pub b_k: Option<Tensor>,
    /// Value bias `[n_kv_heads·d_head]`.
    pub b_v: Option<Tensor>,
    /// Output bias `[d_model]`.
    pub b_o: Option<Tensor>,
    /// Query-head norm over `[d_head]` (QK-norm models).
    pub q_ln: Option<NormWeights>,
    /// Key-head norm over `[d_head]` (QK-norm models).
    pub k_ln: Option<NormWeights>,
}

/// One MLP layer.
#[derive(Debug, Clone)]
pub struct MlpWeights {
    /// Input (the linear branch if gated) `[d_model, d_mlp]`.
    pub w_in: Tensor,
    /// Input bias `[d_mlp]`.
    pub b_in: Option<Tensor>,
    /// Gate `[d_model, d_mlp]` (gated MLPs).
    pub w_gate: Option<Tensor>,
    /// Output `[d_mlp, d_model]`.
    pub w_out: Tensor,
    /// Output bias `[d_model]`.
    pub b_out: Option<Tensor>,
}

/// One transformer block.
#[derive(Debug, Clone)]
pub struct BlockWeights {
    /// Norm before attention (pre-norm) or after it (BERT post-norm).
    pub ln1: NormWeights,
    /// The attention layer.
    pub attn: AttnWeights,
    /// Norm before the MLP (pre-norm) or after it (BERT); absent in attention-only models.
    pub ln2: Option<NormWeights>,
    /// The MLP; absent in attention-only models.
    pub mlp: Option<MlpWeights>,
    /// Norm on the attention output before the residual add (sublayer output norms).
    pub ln1_post: Option<NormWeights>,
    /// Norm on the MLP output before the residual add (sublayer output norms).
    pub ln2_post: Option<NormWeights>,
}

/// BERT's masked-LM transform: `LN(act(x W + b))`.
#[derive(Debug, Clone)]
pub struct MlmHeadWeights {
    /// Dense `[d_model, d_model]`.
    pub w: Tensor,
    /// Dense bias `[d_model]`.
    pub b: Tensor,
    /// The LayerNorm after the activation.
    pub ln: NormWeights,
}

/// All weights of a model.
#[derive(Debug, Clone)]
pub struct Weights {
    /// Token embedding `W_E: [d_vocab, d_model]`.
    pub w_e: Tensor,
    /// Learned positions `W_pos: [n_ctx, d_model]`.
    pub w_pos: Option<Tensor>,
    /// Token-type embedding `[n_token_types, d_model]` (BERT).
    pub w_token_type: Option<Tensor>,
    /// Norm applied to the summed embeddings (BERT).
    pub embed_ln: Option<NormWeights>,
    /// The blocks.
    pub blocks: Vec<BlockWeights>,
    /// Final norm.
    pub ln_final: Option<NormWeights>,
    /// BERT's MLM transform.
    pub mlm_head: Option<MlmHeadWeights>,
    /// BERT's pooler `(W [d_model, d_model], b [d_model])`: `tanh(h_CLS W + b)`.
    pub pooler: Option<(Tensor, Tensor)>,
    /// Untied unembedding `W_U: [d_model, d_vocab]` (`None` when tied to `w_e` or headless;
    /// [`crate::HookedTransformer::w_u`] gives the effective one).
    pub w_u: Option<Tensor>,
    /// Unembedding bias `[d_vocab]`.
    pub b_u: Option<Tensor>,
}

/// The TransformerLens name of the key/value weights (`_W_K` under grouped-query attention).
fn kv_prefix(cfg: &ModelConfig) -> &'static str {
    if cfg.n_kv_heads != cfg.n_heads {
        "_"
    } else {
        ""
    }
}

impl Weights {
    /// Every tensor with its internal name (see the module docs), in a fixed order; tied and
    /// view tensors appear once.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let mut push = |name: String, t: &Tensor| out.push((name, t.clone()));
        push("embed.W_E".into(), &self.w_e);
        if let Some(t) = &self.w_pos {
            push("pos_embed.W_pos".into(), t);
        }
        if let Some(t) = &self.w_token_type {
            push("token_type_embed.W_token_type".into(), t);
        }
        let norm = |prefix: &str, n: &NormWeights, push: &mut dyn FnMut(String, &Tensor)| {
            push(format!("{prefix}.w"), &n.w);
            if let Some(b) = &n.b {
                push(format!("{prefix}.b"), b);
            }
        };
        if let Some(n) = &self.embed_ln {
            norm("embed.ln", n, &mut push);
        }
        for (l, blk) in self.blocks.iter().enumerate() {
            norm(&format!("blocks.{l}.ln1"), &blk.ln1, &mut push);
            let a = &blk.attn;
            let p = format!("blocks.{l}.attn");
            for (n, t) in [
                ("w_q", &a.w_q),
                ("w_k", &a.w_k),
                ("w_v", &a.w_v),
                ("w_o", &a.w_o),
            ] {
                push(format!("{p}.{n}"), t);
            }
            for (n, t) in [
                ("b_q", &a.b_q),
                ("b_k", &a.b_k),
                ("b_v", &a.b_v),
                ("b_o", &a.b_o),
            ] {
                if let Some(t) = t {
                    push(format!("{p}.{n}"), t);
                }
            }
            for (n, ln) in [("q_ln", &a.q_ln), ("k_ln", &a.k_ln)] {
                if let Some(ln) = ln {
                    norm(&format!("{p}.{n}"), ln, &mut push);
                }
            }
            if let Some(n) = &blk.ln1_post {
                norm(&format!("blocks.{l}.ln1_post"), n, &mut push);
            }
            if let Some(n) = &blk.ln2 {
                norm(&format!("blocks.{l}.ln2"), n, &mut push);
            }
            if let Some(m) = &blk.mlp {
                let p = format!("blocks.{l}.mlp");
                push(format!("{p}.W_in"), &m.w_in);
                push(format!("{p}.W_out"), &m.w_out);
                for (n, t) in [
                    ("W_gate", &m.w_gate),
                    ("b_in", &m.b_in),
                    ("b_out", &m.b_out),
                ] {
                    if let Some(t) = t {
                        push(format!("{p}.{n}"), t);
                    }
                }
            }
            if let Some(n) = &blk.ln2_post {
                norm(&format!("blocks.{l}.ln2_post"), n, &mut push);
            }
        }
        if let Some(n) = &self.ln_final {
            norm("ln_final", n, &mut push);
        }
        if let Some(h) = &self.mlm_head {
            push("mlm_head.W".into(), &h.w);
            push("mlm_head.b".into(), &h.b);
            norm("mlm_head.ln", &h.ln, &mut push);
        }
        if let Some((w, b)) = &self.pooler {
            push("pooler.W".into(), w);
            push("pooler.b".into(), b);
        }
        if let Some(w_u) = &self.w_u {
            push("unembed.W_U".into(), w_u);
        }
        if let Some(b) = &self.b_u {
            push("unembed.b_U".into(), b);
        }
        out
    }

    /// Builds weights for `cfg` from internal names (as listed by [`Weights::named_tensors`]);
    /// the tensors are used as given (so trainable variables stay shared).
    pub fn from_named(cfg: &ModelConfig, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = tensors.get(name).ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                source_desc: "named tensors".into(),
            })?;
            if t.dims() != shape {
                return Err(Error::TensorShape {
                    name: name.to_string(),
                    expected: shape.to_vec(),
                    got: t.dims().to_vec(),
                });
            }
            Ok(t.clone())
        };
        let opt = |name: &str, shape: &[usize], present: bool| -> Result<Option<Tensor>> {
            if present {
                get(name, shape).map(Some)
            } else {
                Ok(None)
            }
        };
        build(cfg, &get, &opt, Layout::Internal)
    }

    /// Builds weights for `cfg` by calling `make(name, shape)` for every tensor it needs
    /// (internal names and shapes), e.g. to initialise a model randomly.
    pub fn from_fn(
        cfg: &ModelConfig,
        make: impl Fn(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Self> {
        let opt = |name: &str, shape: &[usize], present: bool| -> Result<Option<Tensor>> {
            if present {
                make(name, shape).map(Some)
            } else {
                Ok(None)
            }
        };
        build(cfg, &make, &opt, Layout::Internal)
    }

    /// Reads TransformerLens state-dict names and shapes (`embed.W_E`, `blocks.{l}.attn.W_Q
    /// [n_heads, d_model, d_head]`, `_W_K` under grouped-query attention, ...) from `store`.
    pub fn from_tl_tensors(cfg: &ModelConfig, store: &mut CheckpointTensors) -> Result<Self> {
        let store = std::cell::RefCell::new(store);
        let get = |name: &str, shape: &[usize]| store.borrow_mut().take(name, shape);
        let opt = |name: &str, shape: &[usize], present: bool| -> Result<Option<Tensor>> {
            if present {
                store.borrow_mut().take(name, shape).map(Some)
            } else {
                Ok(None)
            }
        };
        let w = build(cfg, &get, &opt, Layout::TransformerLens)?;
        store.borrow().finish(|_| false)?;
        Ok(w)
    }

    /// The weights under TransformerLens state-dict names and shapes (metarep's checkpoint
    /// format; loadable into a TransformerLens `HookedTransformer` with the matching config).
    pub fn to_tl_state_dict(&self, cfg: &ModelConfig) -> Result<Vec<(String, Tensor)>> {
        let (h, hk, dh, d) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model);
        let kv = kv_prefix(cfg);
        let mut out = Vec::new();
        for (name, t) in self.named_tensors() {
            let Some(rest) = name.strip_prefix("blocks.") else {
                out.push((name, t.contiguous()?));
                continue;
            };
            let (l, field) = rest.split_once('.').unwrap_or((rest, ""));
            let heads_in = |t: &Tensor, n: usize| -> Result<Tensor> {
                Ok(t.reshape((d, n, dh))?.permute((1, 0, 2))?.contiguous()?)
            };
            let (tl_field, tl) = match field {
                "attn.w_q" => ("attn.W_Q".to_string(), heads_in(&t, h)?),
                "attn.w_k" => (format!("attn.{kv}W_K"), heads_in(&t, hk)?),
                "attn.w_v" => (format!("attn.{kv}W_V"), heads_in(&t, hk)?),
                "attn.w_o" => ("attn.W_O".to_string(), t.reshape((h, dh, d))?),
                "attn.b_q" => ("attn.b_Q".to_string(), t.reshape((h, dh))?),
                "attn.b_k" => (format!("attn.{kv}b_K"), t.reshape((hk, dh))?),
                "attn.b_v" => (format!("attn.{kv}b_V"), t.reshape((hk, dh))?),
                "attn.b_o" => ("attn.b_O".to_string(), t),
                other => (other.to_string(), t),
            };
            out.push((format!("blocks.{l}.{tl_field}"), tl.contiguous()?));
        }
        Ok(out)
    }
}

/// Which names and shapes [`build`] reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Internal,
    TransformerLens,
}

/// Reads a required tensor by name and shape.
type Getter<'a> = &'a dyn Fn(&str, &[usize]) -> Result<Tensor>;
/// Reads a tensor that exists when the flag says so.
type OptGetter<'a> = &'a dyn Fn(&str, &[usize], bool) -> Result<Option<Tensor>>;

/// Assembles [`Weights`] from a getter over names (`get` for required, `opt` for optional).
fn build(cfg: &ModelConfig, get: Getter, opt: OptGetter, layout: Layout) -> Result<Weights> {
    let (d, h, hk, dh) = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
    let nb = cfg.norm_bias();
    let norm_of = |p: &str, d: usize| -> Result<NormWeights> {
        Ok(NormWeights {
            w: get(&format!("{p}.w"), &[d])?,
            b: opt(&format!("{p}.b"), &[d], nb)?,
        })
    };
    let norm = |p: &str| norm_of(p, d);
    let norm_if = |p: &str, d: usize, present: bool| -> Result<Option<NormWeights>> {
        present.then(|| norm_of(p, d)).transpose()
    };
    let tl = layout == Layout::TransformerLens;
    let kv = kv_prefix(cfg);
    // Reads a per-head projection and returns it in the internal `[d, n·dh]` layout.
    let proj_in = |p: &str, int: &str, tl_name: &str, n: usize| -> Result<Tensor> {
        if tl {
            let t = get(&format!("{p}.{tl_name}"), &[n, d, dh])?;
            Ok(t.permute((1, 0, 2))?.contiguous()?.reshape((d, n * dh))?)
        } else {
            get(&format!("{p}.{int}"), &[d, n * dh])
        }
    };
    let bias_in =
        |p: &str, int: &str, tl_name: &str, n: usize, present: bool| -> Result<Option<Tensor>> {
            if tl {
                Ok(opt(&format!("{p}.{tl_name}"), &[n, dh], present)?
                    .map(|t| t.reshape(n * dh))
                    .transpose()?)
            } else {
                opt(&format!("{p}.{int}"), &[n * dh], present)
            }
        };
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("blocks.{l}.attn");
        let w_o = if tl {
            get(&format!("{p}.W_O"), &[h, dh, d])?.reshape((h * dh, d))?
        } else {
            get(&format!("{p}.w_o"), &[h * dh, d])?
        };
        let attn = AttnWeights {
            w_q: proj_in(&p, "w_q", "W_Q", h)?,
            w_k: proj_in(&p, "w_k", &format!("{kv}W_K"), hk)?,
            w_v: proj_in(&p, "w_v", &format!("{kv}W_V"), hk)?,
            w_o,
            b_q: bias_in(&p, "b_q", "b_Q", h, cfg.qkv_bias)?,
            b_k: bias_in(&p, "b_k", &format!("{kv}b_K"), hk, cfg.qkv_bias)?,
            b_v: bias_in(&p, "b_v", &format!("{kv}b_V"), hk, cfg.qkv_bias)?,
            b_o: opt(
                &format!("{p}.{}", if tl { "b_O" } else { "b_o" }),
                &[d],
                cfg.out_bias,
            )?,
            q_ln: norm_if(&format!("{p}.q_ln"), dh, cfg.qk_norm)?,
            k_ln: norm_if(&format!("{p}.k_ln"), dh, cfg.qk_norm)?,
        };
        let has_ln2 = cfg.has_mlp() || cfg.post_norm;
        let mlp = if cfg.has_mlp() {
            let p = format!("blocks.{l}.mlp");
            let m = cfg.d_mlp;
            Some(MlpWeights {
                w_in: get(&format!("{p}.W_in"), &[d, m])?,
                b_in: opt(&format!("{p}.b_in"), &[m], cfg.mlp_bias)?,
                w_gate: opt(&format!("{p}.W_gate"), &[d, m], cfg.gated_mlp)?,
                w_out: get(&format!("{p}.W_out"), &[m, d])?,
                b_out: opt(&format!("{p}.b_out"), &[d], cfg.mlp_bias)?,
            })
        } else {
            None
        };
        blocks.push(BlockWeights {
            ln1: norm(&format!("blocks.{l}.ln1"))?,
            attn,
            ln2: if has_ln2 {
                Some(norm(&format!("blocks.{l}.ln2"))?)
            } else {
                None
            },
            mlp,
            ln1_post: norm_if(&format!("blocks.{l}.ln1_post"), d, cfg.post_sublayer_norms)?,
            ln2_post: norm_if(
                &format!("blocks.{l}.ln2_post"),
                d,
                cfg.post_sublayer_norms && cfg.has_mlp(),
            )?,
        });
    }
    let w_e = get("embed.W_E", &[cfg.d_vocab, d])?;
    let mlm_head = if cfg.lm_head == LmHead::BertMlm {
        Some(MlmHeadWeights {
            w: get("mlm_head.W", &[d, d])?,
            b: get("mlm_head.b", &[d])?,
            ln: norm("mlm_head.ln")?,
        })
    } else {
        None
    };
    let has_head = cfg.lm_head != LmHead::None;
    let w_u = opt(
        "unembed.W_U",
        &[d, cfg.d_vocab],
        has_head && !cfg.tied_embeddings,
    )?;
    let pooler = match opt("pooler.W", &[d, d], cfg.pooler)? {
        Some(w) => Some((w, get("pooler.b", &[d])?)),
        None => None,
    };
    Ok(Weights {
        w_pos: opt("pos_embed.W_pos", &[cfg.n_ctx, d], cfg.learned_positions)?,
        w_token_type: opt(
            "token_type_embed.W_token_type",
            &[cfg.n_token_types, d],
            cfg.n_token_types > 0,
        )?,
        embed_ln: if cfg.post_norm {
            Some(norm("embed.ln")?)
        } else {
            None
        },
        blocks,
        ln_final: if cfg.final_norm {
            Some(norm("ln_final")?)
        } else {
            None
        },
        mlm_head,
        pooler,
        w_u,
        b_u: opt("unembed.b_U", &[cfg.d_vocab], has_head && cfg.unembed_bias)?,
        w_e,
    })
}
