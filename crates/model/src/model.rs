//! [`HookedTransformer`]: one forward pass for every supported family, with a hook at every
//! TransformerLens hook point, and TransformerLens-style weight accessors.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};

use crate::cache::ActivationCache;
use crate::checkpoint_tensors::CheckpointTensors;
use crate::config::{LmHead, ModelConfig, NormKind};
use crate::error::{Error, Result};
use crate::families::load_weights;
use crate::hf_config::{metarep_config_json, parse_hf_config};
use crate::hooks::{CacheHooks, HookFilter, HookPoint, Hooks, NoHooks};
use crate::loading::{resolve, LoadOptions, ModelFiles};
use crate::ops::{
    activation, gated_activation, linear, matmul, norm_apply, norm_stats, softmax_f32, upcast,
    use_device_op, use_f32_kernel,
};
use crate::tokenizer::Tokenizer;
use crate::weights::{NormWeights, Weights};
use metarep_kernels::device_ops::{causal_bias, masked_scores, masked_softmax, swap_axes12};

use crate::input::Input;

/// Where a run stops and what it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunTo {
    /// Logits `[batch, pos, d_vocab]`.
    Logits,
    /// The hidden states the head reads `[batch, pos, d_model]`: after `ln_final` for decoders,
    /// the last block's output for BERT (HF's `last_hidden_state`).
    Hidden,
    /// TransformerLens's `stop_at_layer`: run the embeddings and blocks `0..n` and return the
    /// residual stream entering block `n` `[batch, pos, d_model]` (`n = n_layers`: after the last
    /// block, before the final norm).
    Layer(usize),
}

/// A transformer whose forward pass exposes every TransformerLens hook point.
///
/// Cloning is cheap (the weights are shared).
#[derive(Debug, Clone)]
pub struct HookedTransformer {
    cfg: Arc<ModelConfig>,
    weights: Arc<Weights>,
    /// The effective unembedding `[d_model, d_vocab]` (a view of `W_E` when tied).
    w_u: Option<Tensor>,
    /// On a GPU with `d_vocab` not a multiple of 8: the unembedding and its bias padded with
    /// zero columns to one (see [`HookedTransformer::unembed`]).
    padded_head: Option<(Tensor, Option<Tensor>)>,
    /// Rotary inverse frequencies of the global layers and (Gemma) of the sliding-window ones.
    inv_freq: Option<Vec<f64>>,
    local_inv_freq: Option<Vec<f64>>,
    tokenizer: Option<Arc<Tokenizer>>,
    /// Inputs past `n_ctx` are errors even where positions are rotary (see
    /// [`HookedTransformer::check_positions`]).
    strict_positions: bool,
}

/// Calls `hooks` at `point` when it wants to, checking a replacement keeps the shape.
#[inline(always)]
fn hook<H: Hooks>(hooks: &mut H, point: HookPoint, act: Tensor) -> Result<Tensor> {
    if !hooks.wants(point) {
        return Ok(act);
    }
    let shape = act.dims().to_vec();
    let (dtype, device) = (act.dtype(), act.device().clone());
    let out = hooks.apply(point, act)?;
    if out.dims() != shape.as_slice() {
        return Err(Error::HookShape {
            hook: point.to_string(),
            expected: shape,
            got: out.dims().to_vec(),
        });
    }
    // A hook may compute elsewhere (an SAE on the CPU for a model on a GPU): its output comes
    // back in the activation's dtype and device.
    if out.dtype() != dtype || !out.device().same_device(&device) {
        return Ok(out.to_dtype(dtype)?.to_device(&device)?);
    }
    Ok(out)
}

impl HookedTransformer {
    /// A model from a config and weights; the weights' shapes are checked against the config.
    pub fn new(cfg: ModelConfig, weights: Weights) -> Result<Self> {
        cfg.validate()?;
        // Re-reading every tensor by name checks presence and shapes in one place.
        let named = weights.named_tensors().into_iter().collect();
        Weights::from_named(&cfg, &named)?;
        let w_u = match (&weights.w_u, cfg.lm_head) {
            (_, LmHead::None) => None,
            (Some(w_u), _) => Some(w_u.clone()),
            (None, _) => Some(weights.w_e.t()?),
        };
        let pad = (8 - cfg.d_vocab % 8) % 8;
        let padded_head = match &w_u {
            Some(w) if pad > 0 && !w.device().is_cpu() => Some((
                w.pad_with_zeros(1, 0, pad)?,
                weights
                    .b_u
                    .as_ref()
                    .map(|b| b.pad_with_zeros(0, 0, pad))
                    .transpose()?,
            )),
            _ => None,
        };
        let inv_freq = cfg.rotary.as_ref().map(|r| r.inv_freq());
        let local_inv_freq = cfg.local_rotary.as_ref().map(|r| r.inv_freq());
        Ok(Self {
            cfg: Arc::new(cfg),
            weights: Arc::new(weights),
            w_u,
            padded_head,
            inv_freq,
            local_inv_freq,
            tokenizer: None,
            strict_positions: false,
        })
    }

    /// Loads a `.gguf` file, a local directory or a hub id (see [`crate::loading`]).
    pub fn from_pretrained(spec: &str, opts: &LoadOptions) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_file()
            && path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return Self::from_gguf(path, opts);
        }
        Self::from_files(&resolve(spec, opts)?, opts)
    }

    /// Loads a GGUF file: config from its metadata, every tensor dequantized to `opts.dtype`,
    /// the tokenizer from `tokenizer.ggml.*` (see [`crate::gguf`]).
    pub fn from_gguf(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let g = crate::gguf::read_gguf(path, opts.dtype, &opts.device)?;
        let mut cfg = g.config;
        let desc = path.display().to_string();
        let mut store = CheckpointTensors::from_map(g.tensors, &desc, opts.dtype, &opts.device);
        let weights = load_weights(&mut cfg, &mut store)?;
        Ok(Self::new(cfg, weights)?.with_tokenizer(g.tokenizer))
    }

    /// Loads the checkpoint in directory `dir`.
    pub fn from_dir(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        Self::from_files(&crate::loading::local_files(dir)?, opts)
    }

    /// Loads a checkpoint from its files.
    pub fn from_files(files: &ModelFiles, opts: &LoadOptions) -> Result<Self> {
        let text =
            std::fs::read_to_string(&files.config).map_err(|e| Error::io(&files.config, e))?;
        let mut cfg = parse_hf_config(&text, &files.config)?;
        let mut store = CheckpointTensors::open(&files.weights, opts.dtype, &opts.device)?;
        let weights = load_weights(&mut cfg, &mut store)?;
        let mut model = Self::new(cfg, weights)?;
        if let Some(t) = &files.tokenizer {
            let (bos, eos) = crate::loading::declared_special_ids(&files.config)?;
            let tokenizer = Tokenizer::from_file(t)?.with_special_ids(bos, eos);
            model.tokenizer = Some(Arc::new(tokenizer));
        }
        Ok(model)
    }

    /// Writes `config.json` (`model_type = "metarep"`), `model.safetensors` (TransformerLens
    /// state-dict names) and, if the model has one, `tokenizer.json` into `dir`.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        metarep_core::ensure_dir(dir)?;
        let tensors = self.weights.to_tl_state_dict(&self.cfg)?;
        let bytes =
            safetensors::tensor::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)
                .map_err(|e| Error::Invalid(format!("serializing weights: {e}")))?;
        metarep_core::atomic_write(&dir.join("model.safetensors"), &bytes)?;
        let mut cfg = metarep_config_json(&self.cfg)?;
        cfg.push('\n');
        metarep_core::atomic_write(&dir.join("config.json"), cfg.as_bytes())?;
        if let Some(tok) = &self.tokenizer {
            tok.save(&dir.join("tokenizer.json"))?;
        }
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The weights (internal layout).
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// The tokenizer loaded with the checkpoint, if it had one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_deref()
    }

    /// Attaches a tokenizer.
    pub fn with_tokenizer(mut self, tokenizer: Tokenizer) -> Self {
        self.tokenizer = Some(Arc::new(tokenizer));
        self
    }

    /// The same model, refusing (`strict`) or allowing with a warning inputs past `n_ctx` when
    /// its positions are rotary (see [`HookedTransformer::check_positions`]).
    pub fn with_strict_positions(mut self, strict: bool) -> Self {
        self.strict_positions = strict;
        self
    }

    /// Checks that `len` positions fit the context length ([`ModelConfig::check_positions`]).
    /// Past it, a learned position table has no rows, so that is always an error; rotary
    /// positions extrapolate beyond what the model was trained on, so that is an error for a
    /// strict model ([`HookedTransformer::with_strict_positions`]) and otherwise a warning on
    /// stderr, printed once per process.
    pub fn check_positions(&self, len: usize) -> Result<()> {
        match self.cfg.check_positions(len) {
            Err(e) if !self.cfg.learned_positions && !self.strict_positions => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    eprintln!(
                        "warning: {e}; rotary positions past it were never trained on, so \
                         results may be unreliable (warned once)"
                    )
                });
                Ok(())
            }
            other => other,
        }
    }

    /// The model's text encoder (its tokenizer), if it has one; always `None` when built
    /// without the `tokenizers` feature.
    pub fn text_encoder(&self) -> Option<&dyn crate::text::TextEncoder> {
        if let Some(t) = &self.tokenizer {
            return Some(t.as_ref());
        }
        None
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.weights.w_e.device()
    }

    /// The dtype the forward pass runs in.
    pub fn dtype(&self) -> DType {
        self.weights.w_e.dtype()
    }

    /// The same model with weights converted to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let map = self
            .weights
            .named_tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(dtype)?)))
            .collect::<Result<_>>()?;
        let mut m = Self::new((*self.cfg).clone(), Weights::from_named(&self.cfg, &map)?)?;
        m.tokenizer = self.tokenizer.clone();
        m.strict_positions = self.strict_positions;
        Ok(m)
    }

    /// What [`HookedTransformer::forward`] returns: logits, or hidden states for a headless
    /// checkpoint (e.g. a sentence-embedding `BertModel`).
    pub fn default_output(&self) -> RunTo {
        if self.cfg.lm_head == LmHead::None {
            RunTo::Hidden
        } else {
            RunTo::Logits
        }
    }

    /// How far a pass must run to reach every hook of `points`: through the last block one of
    /// them is in, as TransformerLens's `stop_at_layer` (no later blocks, no unembedding); the
    /// whole pass ([`HookedTransformer::default_output`]) when one is outside the blocks.
    pub fn run_to_reach(&self, points: &[HookPoint]) -> RunTo {
        let layers: Option<Vec<usize>> = points.iter().map(HookPoint::layer).collect();
        match layers.and_then(|l| l.into_iter().max()) {
            Some(last) => RunTo::Layer(last + 1),
            None => self.default_output(),
        }
    }

    /// The plain forward pass: logits `[batch, pos, d_vocab]` (hidden states for a headless model).
    pub fn forward(&self, input: impl Into<Input>) -> Result<Tensor> {
        self.run(&input.into(), &mut NoHooks, self.default_output())
    }

    /// Forward pass with `hooks` reading or replacing activations.
    pub fn run_with_hooks<H: Hooks>(
        &self,
        input: impl Into<Input>,
        hooks: &mut H,
    ) -> Result<Tensor> {
        self.run(&input.into(), hooks, self.default_output())
    }

    /// Forward pass recording the hooks `filter` selects. The first call in a process keeps freed
    /// memory in the process from then on ([`crate::memory`]: repeated cached passes reuse
    /// their pages instead of faulting them in again) unless
    /// [`crate::memory::keep_allocator_defaults`] was called before.
    pub fn run_with_cache(
        &self,
        input: impl Into<Input>,
        filter: impl Into<HookFilter>,
    ) -> Result<(Tensor, ActivationCache)> {
        self.run_with_cache_to(&input.into(), filter, self.default_output())
    }

    /// [`HookedTransformer::run_with_cache`] stopping at `to` (e.g. `RunTo::Layer(n)`).
    pub fn run_with_cache_to(
        &self,
        input: &Input,
        filter: impl Into<HookFilter>,
        to: RunTo,
    ) -> Result<(Tensor, ActivationCache)> {
        crate::memory::retain_for_caching();
        let mut cache = CacheHooks::new(filter.into().resolve(&self.cfg)?);
        let out = self.run(input, &mut cache, to)?;
        Ok((out, ActivationCache::new(self.clone(), cache.acts)))
    }

    /// Blocks a pass up to `to` runs: `n` for `RunTo::Layer(n)` (at most the model's), else all.
    fn layers_to(&self, to: RunTo) -> Result<usize> {
        match to {
            RunTo::Layer(n) if n > self.cfg.n_layers => Err(Error::Invalid(format!(
                "stop_at_layer {n} is beyond the model's {} layers",
                self.cfg.n_layers
            ))),
            RunTo::Layer(n) => Ok(n),
            _ => Ok(self.cfg.n_layers),
        }
    }

    /// The general forward pass: embeddings, blocks and head, calling `hooks` at every hook
    /// point, up to `to`.
    pub fn run<H: Hooks>(&self, input: &Input, hooks: &mut H, to: RunTo) -> Result<Tensor> {
        self.run_inner(input, hooks, to, None)
    }

    /// The forward pass of new tokens after the ones `cache` holds (keys and values of every
    /// layer): positions continue after the cache's last one (from `cache.len()` for a cache
    /// filled by token runs), the new keys and values are appended,
    /// and hooks see the new positions only. Returns the logits of the new positions
    /// `[batch, new, d_vocab]`. Decoder models only.
    pub fn run_cached<H: Hooks>(
        &self,
        input: &Input,
        cache: &mut KvCache,
        hooks: &mut H,
    ) -> Result<Tensor> {
        self.run_cached_to(input, cache, hooks, RunTo::Logits)
    }

    /// [`HookedTransformer::run_cached`] up to `to`: `RunTo::Hidden` fills the cache and returns
    /// the final normalised stream without the unembedding (`RunTo::Layer` is refused: it would
    /// leave later layers' keys and values out of the cache).
    pub fn run_cached_to<H: Hooks>(
        &self,
        input: &Input,
        cache: &mut KvCache,
        hooks: &mut H,
        to: RunTo,
    ) -> Result<Tensor> {
        self.check_cached_run(cache, to)?;
        if !self.cfg.causal {
            return Err(Error::Unsupported(
                "a key/value cache needs a causal (decoder) model".into(),
            ));
        }
        if input.attention_mask.is_some() {
            return Err(Error::Unsupported(
                "padding masks with a key/value cache (give equal-length rows)".into(),
            ));
        }
        self.run_inner(input, hooks, to, Some(cache))
    }

    fn run_inner<H: Hooks>(
        &self,
        input: &Input,
        hooks: &mut H,
        to: RunTo,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let n_layers = self.layers_to(to)?;
        let offset = cache.as_ref().map_or(0, |c| c.next_position());
        let tokens = self.check_tokens(&input.tokens, offset)?;
        let padding = input.attention_mask.as_ref();
        let positions: Vec<usize> = (offset..offset + tokens.dim(1)?).collect();
        let e = self.lookup(&tokens)?;
        let x = self.embed(e, &positions, input.token_type_ids.as_ref(), hooks)?;
        self.run_blocks(x, 0..n_layers, &positions, padding, cache, hooks, to)
    }

    /// TransformerLens's `start_at_layer`: runs blocks `start..` and the head (as far as `to`
    /// says) from `resid`, the residual stream entering block `start` `[batch, pos, d_model]`
    /// at positions `0..pos`, with no padding and no key/value cache. Hooks of earlier blocks
    /// and of the embeddings are not called. Given the residual stream of a run at `start`, it
    /// returns what that run returns.
    pub fn run_from<H: Hooks>(
        &self,
        resid: &Tensor,
        start: usize,
        hooks: &mut H,
        to: RunTo,
    ) -> Result<Tensor> {
        let end = match to {
            RunTo::Layer(n) => n,
            _ => self.cfg.n_layers,
        };
        if start > end || end > self.cfg.n_layers {
            return Err(Error::Invalid(format!(
                "run_from: blocks {start}..{end} are not a range of the model's {} layers",
                self.cfg.n_layers
            )));
        }
        let (_, p, d) = resid.dims3()?;
        if d != self.cfg.d_model {
            return Err(Error::shape(
                "run_from residual stream",
                format!("[batch, pos, {}]", self.cfg.d_model),
                format!("{:?}", resid.dims()),
            ));
        }
        self.check_positions(p)?;
        let positions: Vec<usize> = (0..p).collect();
        self.run_blocks(resid.clone(), start..end, &positions, None, None, hooks, to)
    }

    /// The forward pass from input embeddings `[batch, pos, d_model]` (vectors of what
    /// `hook_embed` outputs: token embeddings, or anything in their space such as a learned
    /// summary of many tokens) at explicit, strictly increasing `positions` (one per input
    /// row position). `hook_embed` sees `embeds`; learned position embeddings are those of
    /// `positions`, rotary angles are taken at them, and a query attends to the inputs at its
    /// own and earlier positions (sliding windows measured in positions). Gaps are allowed:
    /// a run over tokens at positions with gaps equals the full run with the gaps' tokens
    /// masked out as padding. With the token embeddings at `0..pos` it returns what
    /// [`HookedTransformer::run`] returns for the tokens. Decoder models only.
    pub fn run_embeddings<H: Hooks>(
        &self,
        embeds: &Tensor,
        positions: &[usize],
        hooks: &mut H,
        to: RunTo,
    ) -> Result<Tensor> {
        self.check_embeddings(embeds, positions, 0)?;
        let n_layers = self.layers_to(to)?;
        let x = self.embed(embeds.clone(), positions, None, hooks)?;
        self.run_blocks(x, 0..n_layers, positions, None, None, hooks, to)
    }

    /// [`HookedTransformer::run_embeddings`] after a prefix whose keys and values `prefix`
    /// holds with their positions (filled by [`HookedTransformer::run_cached_to`] or
    /// [`HookedTransformer::run_embeddings_cached`], perhaps [`KvCache::truncated`]): the inputs
    /// attend to the prefix and to each other, their positions all after the prefix's last.
    /// `prefix` is left as it is (the new keys and values are not kept), so one prefix serves
    /// many continuations. Returns what the run over prefix and inputs together returns at the
    /// inputs.
    pub fn run_embeddings_after<H: Hooks>(
        &self,
        embeds: &Tensor,
        positions: &[usize],
        prefix: &KvCache,
        hooks: &mut H,
        to: RunTo,
    ) -> Result<Tensor> {
        let mut cache = prefix.clone();
        self.run_embeddings_cached(embeds, positions, &mut cache, hooks, to)
    }

    /// [`HookedTransformer::run_embeddings`] after the keys and values `cache` holds, which it
    /// then holds for the inputs too (positions as in
    /// [`HookedTransformer::run_embeddings_after`]). `to` must run every layer (logits or
    /// hidden states), so that the cache is whole.
    pub fn run_embeddings_cached<H: Hooks>(
        &self,
        embeds: &Tensor,
        positions: &[usize],
        cache: &mut KvCache,
        hooks: &mut H,
        to: RunTo,
    ) -> Result<Tensor> {
        self.check_cached_run(cache, to)?;
        self.check_embeddings(embeds, positions, cache.next_position())?;
        if let Some((k, _)) = cache.layers.iter().find_map(|l| l.kv.as_ref()) {
            if k.dim(0)? != embeds.dim(0)? {
                return Err(Error::shape(
                    "input embeddings after a cached prefix",
                    format!("the prefix's batch of {}", k.dim(0)?),
                    format!("{:?}", embeds.dims()),
                ));
            }
        }
        let n_layers = self.layers_to(to)?;
        let x = self.embed(embeds.clone(), positions, None, hooks)?;
        self.run_blocks(x, 0..n_layers, positions, None, Some(cache), hooks, to)
    }

    /// Errors unless the model is a decoder, `embeds` is a non-empty `[batch, pos, d_model]`
    /// and `positions` holds one strictly increasing position `≥ first` per input, within the
    /// context length ([`HookedTransformer::check_positions`]).
    fn check_embeddings(&self, embeds: &Tensor, positions: &[usize], first: usize) -> Result<()> {
        if !self.cfg.causal {
            return Err(Error::Unsupported(
                "input embeddings at explicit positions need a causal (decoder) model".into(),
            ));
        }
        let (_, p, d) = embeds.dims3().map_err(|_| {
            Error::shape(
                "input embeddings",
                "[batch, pos, d_model]",
                format!("{:?}", embeds.dims()),
            )
        })?;
        if d != self.cfg.d_model || p == 0 {
            return Err(Error::shape(
                "input embeddings",
                format!("a non-empty [batch, pos, {}]", self.cfg.d_model),
                format!("{:?}", embeds.dims()),
            ));
        }
        if positions.len() != p {
            return Err(Error::shape(
                "positions",
                format!("{p} positions (one per input position)"),
                format!("{}", positions.len()),
            ));
        }
        if positions[0] < first {
            return Err(Error::Invalid(format!(
                "positions must start after the cached prefix's last position (at {first} or later), got {}",
                positions[0]
            )));
        }
        if let Some(i) = positions.windows(2).position(|w| w[1] <= w[0]) {
            return Err(Error::Invalid(format!(
                "positions must be strictly increasing: {} then {} at index {}",
                positions[i],
                positions[i + 1],
                i + 1
            )));
        }
        self.check_positions(positions[p - 1] + 1)
    }

    /// Errors unless `cache` has one entry per layer of this model and `to` runs every layer (a
    /// pass up to a layer would leave later layers' keys and values out of the cache).
    fn check_cached_run(&self, cache: &KvCache, to: RunTo) -> Result<()> {
        if let RunTo::Layer(n) = to {
            return Err(Error::Unsupported(format!(
                "a cached pass up to layer {n}: the cache needs every layer"
            )));
        }
        if cache.layers.len() != self.cfg.n_layers {
            return Err(Error::Invalid(format!(
                "the cache has {} layers, the model {}",
                cache.layers.len(),
                self.cfg.n_layers
            )));
        }
        Ok(())
    }

    /// Blocks `layers` from the residual stream `x` entering the first of them at `positions`
    /// (after the cache's keys at `0..cache.len()`, if any), then the head as `to` says
    /// (`RunTo::Layer` returns the stream after the last block run).
    #[allow(clippy::too_many_arguments)]
    fn run_blocks<H: Hooks>(
        &self,
        mut x: Tensor,
        layers: std::ops::Range<usize>,
        positions: &[usize],
        padding: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        hooks: &mut H,
        to: RunTo,
    ) -> Result<Tensor> {
        let b = x.dim(0)?;
        let cached: Vec<usize> = cache.as_ref().map_or(Vec::new(), |c| c.positions.clone());
        let windowed = |l: usize| self.cfg.window_of(l).is_some();
        // Full-attention and sliding-window layers differ in mask and (Gemma) rotary tables.
        let full_mask = if layers.clone().any(|l| !windowed(l)) {
            self.attention_bias(b, positions, &cached, None, padding)?
        } else {
            None
        };
        let window_mask = match self.cfg.sliding_window {
            Some(w) if layers.clone().any(windowed) => {
                self.attention_bias(b, positions, &cached, Some(w), padding)?
            }
            _ => None,
        };
        let rope = self.rope_tables(self.inv_freq.as_deref(), positions)?;
        let local_rope = self.rope_tables(self.local_inv_freq.as_deref(), positions)?;
        for l in layers {
            let kv = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            let (mask, rope) = if windowed(l) {
                (window_mask.as_ref(), local_rope.as_ref().or(rope.as_ref()))
            } else {
                (full_mask.as_ref(), rope.as_ref())
            };
            x = self.block(l, x, mask, rope, kv, hooks)?;
        }
        if let Some(c) = cache {
            c.positions.extend_from_slice(positions);
        }
        if let RunTo::Layer(_) = to {
            return Ok(x);
        }
        let hidden = match &self.weights.ln_final {
            Some(ln) => self.norm(
                &x,
                ln,
                HookPoint::LnFinalScale,
                HookPoint::LnFinalNormalized,
                hooks,
            )?,
            None => x,
        };
        if to == RunTo::Hidden {
            return Ok(hidden);
        }
        self.unembed(&hidden)
    }

    /// Logits from hidden states `[batch, pos, d_model]` (the head only).
    pub fn unembed(&self, hidden: &Tensor) -> Result<Tensor> {
        let w_u = self.w_u.as_ref().ok_or_else(|| {
            Error::Unsupported(
                "this checkpoint has no LM head (no unembedding); use RunTo::Hidden".into(),
            )
        })?;
        let (b, p, d) = hidden.dims3()?;
        let mut h = hidden.reshape((b * p, d))?;
        if let Some(head) = &self.weights.mlm_head {
            h = activation(&linear(&h, &head.w, Some(&head.b))?, self.cfg.act)?;
            h = self
                .norm(
                    &h.unsqueeze(0)?,
                    &head.ln,
                    HookPoint::LnFinalScale,
                    HookPoint::LnFinalNormalized,
                    &mut NoHooks,
                )?
                .squeeze(0)?;
        }
        let v = self.cfg.d_vocab;
        // An output row of an odd length sends cuBLAS to a slow unaligned kernel (7× the
        // time on an H200): on a GPU, multiply by the unembedding padded to a multiple of 8
        // columns (built once, at construction) and return a view of the first `d_vocab` (a
        // copy would cost three times the product).
        let (w_u, b_u) = match &self.padded_head {
            Some((w, b)) if use_device_op(&h) => (w, b.as_ref()),
            _ => (w_u, self.weights.b_u.as_ref()),
        };
        let width = w_u.dim(1)?;
        let mut logits = linear(&h, w_u, b_u)?;
        if let Some(cap) = self.cfg.final_softcap {
            logits = soft_cap(&logits, cap)?;
        }
        Ok(logits.reshape((b, p, width))?.narrow(2, 0, v)?)
    }

    /// Validates token ids (`[batch, pos]`, each `< d_vocab`, positions within `n_ctx` as
    /// [`HookedTransformer::check_positions`] asks, counting `offset` earlier ones) and returns
    /// them as u32.
    fn check_tokens(&self, tokens: &Tensor, offset: usize) -> Result<Tensor> {
        let p = tokens.dims().get(1).copied().unwrap_or(0);
        let ids = self.check_ids(tokens)?;
        self.check_positions(offset + p)?;
        Ok(ids)
    }

    /// Validates token ids (a non-empty `[batch, pos]` of an integer dtype, each `< d_vocab`)
    /// and returns them as u32 on the model's device.
    fn check_ids(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, p) = tokens
            .dims2()
            .map_err(|_| Error::shape("tokens", "[batch, pos]", format!("{:?}", tokens.dims())))?;
        if b == 0 || p == 0 {
            return Err(Error::shape(
                "tokens",
                "a non-empty [batch, pos]",
                format!("{:?}", tokens.dims()),
            ));
        }
        if tokens.dtype().is_float() {
            return Err(Error::shape(
                "tokens",
                "an integer dtype",
                format!("{:?}", tokens.dtype()),
            ));
        }
        let ids = tokens
            .to_dtype(DType::I64)?
            .to_device(&Device::Cpu)?
            .to_vec2::<i64>()?;
        for (bi, row) in ids.iter().enumerate() {
            for (pi, &id) in row.iter().enumerate() {
                if id < 0 || id as usize >= self.cfg.d_vocab {
                    return Err(Error::TokenOutOfRange {
                        id: id.clamp(0, u32::MAX as i64) as u32,
                        batch: bi,
                        pos: pi,
                        vocab: self.cfg.d_vocab,
                    });
                }
            }
        }
        Ok(tokens.to_dtype(DType::U32)?.to_device(self.device())?)
    }

    /// The additive attention bias `[batch or 1, 1, q, k]` (0 or `-inf`; on a GPU expanded to
    /// `[batch, heads, q, k]`) of queries at
    /// `positions` over keys at positions `cached` followed by `positions` (a query sees keys
    /// at its own or earlier positions, at most `window` positions back), or `None` when every
    /// query sees every key.
    fn attention_bias(
        &self,
        b: usize,
        positions: &[usize],
        cached: &[usize],
        window: Option<usize>,
        padding: Option<&Tensor>,
    ) -> Result<Option<AttnMask>> {
        let p = positions.len();
        let keys: Vec<usize> = cached.iter().chain(positions).copied().collect();
        let keys_n = keys.len();
        let gpu = !self.device().is_cpu();
        // With positions that only increase, "no key after the query's position" is the causal
        // rule on indices, which the softmax kernels apply themselves (reading only the keys a
        // query sees); it is not built here.
        let rule = self.cfg.causal && window.is_none() && keys.windows(2).all(|w| w[0] < w[1]);
        let mut left_padded = false;
        let mut bias = if (self.cfg.causal && !rule) || window.is_some() {
            let mut m = vec![0f32; p * keys_n];
            for (qi, &q) in positions.iter().enumerate() {
                for (ki, &k) in keys.iter().enumerate() {
                    let future = self.cfg.causal && k > q;
                    let too_old = window.is_some_and(|w| q >= k + w);
                    if future || too_old {
                        m[qi * keys_n + ki] = f32::NEG_INFINITY;
                    }
                }
            }
            Some(Tensor::from_vec(m, (1, 1, p, keys_n), &Device::Cpu)?)
        } else {
            None
        };
        if let Some(mask) = padding {
            if mask.dims() != [b, p] {
                return Err(Error::shape(
                    "attention_mask",
                    format!("[{b}, {p}]"),
                    format!("{:?}", mask.dims()),
                ));
            }
            let rows = mask
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .to_vec2::<f32>()?;
            let mut keys = vec![0f32; b * p];
            left_padded = rows.iter().any(|row| row.first() == Some(&0.0));
            for (bi, row) in rows.iter().enumerate() {
                if row.iter().all(|&v| v == 0.0) {
                    return Err(Error::Invalid(format!(
                        "attention_mask row {bi} masks every token"
                    )));
                }
                for (k, &v) in row.iter().enumerate() {
                    if v != 0.0 && v != 1.0 {
                        return Err(Error::shape(
                            "attention_mask",
                            "values 0 or 1",
                            format!("{v} at [{bi}, {k}]"),
                        ));
                    }
                    if v == 0.0 {
                        keys[bi * p + k] = f32::NEG_INFINITY;
                    }
                }
            }
            let keys = Tensor::from_vec(keys, (b, 1, 1, p), &Device::Cpu)?;
            bias = Some(match bias {
                Some(c) => c.broadcast_add(&keys)?,
                None => keys,
            });
        }
        let causal = rule.then_some(keys_n - p);
        if bias.is_none() && causal.is_none() {
            return Ok(None);
        }
        // A query that sees no key at all (padding before it, or a window past it) gets a row
        // of zeros from the softmax. The CPU kernels and the GPU's masked softmax give zeros
        // anyway; only candle-nn's fused softmax (hooked scores on a GPU) needs telling.
        let empty_rows = gpu
            && (left_padded && rule
                || match &bias {
                    Some(bias) => bias
                        .max_keepdim(3)?
                        .flatten_all()?
                        .to_vec1::<f32>()?
                        .contains(&f32::NEG_INFINITY),
                    None => false,
                });
        // On a GPU the bias stays compact and f32 (the masked softmax reads it as it is).
        let dtype = if gpu { DType::F32 } else { self.dtype() };
        let bias = match bias {
            Some(bias) => Some(bias.to_dtype(dtype)?.to_device(self.device())?),
            None => None,
        };
        Ok(Some(AttnMask {
            bias,
            causal,
            empty_rows,
        }))
    }

    /// `(cos, sin)` tables `[1, pos, 1, rotary_dim / 2]` of the inverse frequencies `inv` at
    /// `positions`.
    fn rope_tables(
        &self,
        inv: Option<&[f64]>,
        positions: &[usize],
    ) -> Result<Option<(Tensor, Tensor)>> {
        let Some(inv) = inv else {
            return Ok(None);
        };
        let half = inv.len();
        let p = positions.len();
        let mut cos = Vec::with_capacity(p * half);
        let mut sin = Vec::with_capacity(p * half);
        for &pos in positions {
            for f in inv {
                // f32 angles, as the reference implementations compute them.
                let angle = (pos as f32) * (*f as f32);
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let dev = self.device();
        let dt = self.dtype();
        Ok(Some((
            Tensor::from_vec(cos, (1, p, 1, half), dev)?.to_dtype(dt)?,
            Tensor::from_vec(sin, (1, p, 1, half), dev)?.to_dtype(dt)?,
        )))
    }

    /// Token embeddings `[batch, pos, d_model]` of `tokens` `[batch, pos]` (any integer dtype,
    /// each `< d_vocab`), scaled as the model scales them (Gemma): what `hook_embed` sees, and
    /// what [`HookedTransformer::run_embeddings`] takes.
    pub fn token_embeddings(&self, tokens: &Tensor) -> Result<Tensor> {
        self.lookup(&self.check_ids(tokens)?)
    }

    /// [`HookedTransformer::token_embeddings`] of checked u32 ids.
    fn lookup(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, p) = tokens.dims2()?;
        let e = self
            .weights
            .w_e
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, p, self.cfg.d_model))?;
        Ok(match self.cfg.embed_scale {
            Some(scale) => e.affine(scale, 0.0)?,
            None => e,
        })
    }

    /// The residual stream entering block 0 from input embeddings `e` `[batch, pos, d_model]`
    /// at `positions`: `hook_embed`, learned position and token-type embeddings, and the
    /// embedding norm where the model has them.
    fn embed<H: Hooks>(
        &self,
        e: Tensor,
        positions: &[usize],
        types: Option<&Tensor>,
        hooks: &mut H,
    ) -> Result<Tensor> {
        let (b, p, d) = e.dims3()?;
        let w = &self.weights;
        let mut x = hook(hooks, HookPoint::Embed, e)?;
        if let Some(w_pos) = &w.w_pos {
            let contiguous = positions.windows(2).all(|w| w[1] == w[0] + 1);
            let rows = if contiguous {
                w_pos.narrow(0, positions[0], p)?
            } else {
                let ids: Vec<u32> = positions.iter().map(|&i| i as u32).collect();
                w_pos.index_select(&Tensor::new(ids, w_pos.device())?, 0)?
            };
            let pe = rows.unsqueeze(0)?.broadcast_as((b, p, d))?;
            let pe = hook(hooks, HookPoint::PosEmbed, pe)?;
            x = (x + pe)?;
        }
        if let Some(w_tt) = &w.w_token_type {
            let ids = match types {
                Some(t) => {
                    if t.dims() != [b, p] {
                        return Err(Error::shape(
                            "token_type_ids",
                            format!("[{b}, {p}]"),
                            format!("{:?}", t.dims()),
                        ));
                    }
                    let ids = t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
                    if let Some(bad) = ids
                        .iter()
                        .find(|&&i| i < 0 || i as usize >= self.cfg.n_token_types)
                    {
                        return Err(Error::Invalid(format!(
                            "token type id {bad} is out of range ({} types)",
                            self.cfg.n_token_types
                        )));
                    }
                    t.to_dtype(DType::U32)?
                        .to_device(self.device())?
                        .flatten_all()?
                }
                None => Tensor::zeros(b * p, DType::U32, self.device())?,
            };
            let te = w_tt.index_select(&ids, 0)?.reshape((b, p, d))?;
            let te = hook(hooks, HookPoint::TokenTypeEmbed, te)?;
            x = (x + te)?;
        }
        if let Some(ln) = &w.embed_ln {
            x = self.norm(
                &x,
                ln,
                HookPoint::EmbedLnScale,
                HookPoint::EmbedLnNormalized,
                hooks,
            )?;
        }
        Ok(x)
    }

    /// TransformerLens LayerNorm / RMSNorm with `hook_scale` and `hook_normalized` (LayerNorm's
    /// normalized output includes `w` and `b`; RMSNorm's is before `w`, as in TransformerLens).
    fn norm<H: Hooks>(
        &self,
        x: &Tensor,
        ln: &NormWeights,
        scale_at: HookPoint,
        normalized_at: HookPoint,
        hooks: &mut H,
    ) -> Result<Tensor> {
        if use_f32_kernel(x) && ln.w.dtype() == DType::F32 {
            return self.norm_fused(x, ln, scale_at, normalized_at, hooks);
        }
        let hooked = hooks.wants(scale_at) || hooks.wants(normalized_at);
        if use_device_op(x) && ln.w.dtype() == x.dtype() && !hooked {
            return self.norm_device(x, ln);
        }
        let dtype = x.dtype();
        let x = upcast(x)?;
        let eps = self.cfg.eps;
        let out = match self.cfg.norm {
            NormKind::LayerNorm => {
                let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
                let scale = (xc.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
                let scale = hook(hooks, scale_at, scale)?;
                let mut y = xc
                    .broadcast_div(&scale)?
                    .broadcast_mul(&ln.w.to_dtype(x.dtype())?)?;
                if let Some(b) = &ln.b {
                    y = y.broadcast_add(&b.to_dtype(x.dtype())?)?;
                }
                hook(hooks, normalized_at, y)?
            }
            NormKind::RmsNorm => {
                let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
                let scale = hook(hooks, scale_at, scale)?;
                let y = hook(hooks, normalized_at, x.broadcast_div(&scale)?)?;
                y.broadcast_mul(&ln.w.to_dtype(x.dtype())?)?
            }
        };
        Ok(out.to_dtype(dtype)?)
    }

    /// [`HookedTransformer::norm`] on a GPU when neither of its hooks is wanted: candle-nn's
    /// fused layer / RMS norm (one kernel, f32 accumulation for half-precision inputs).
    fn norm_device(&self, x: &Tensor, ln: &NormWeights) -> Result<Tensor> {
        let x = x.contiguous()?;
        let eps = self.cfg.eps as f32;
        Ok(match self.cfg.norm {
            NormKind::LayerNorm => {
                let b = match &ln.b {
                    Some(b) => b.clone(),
                    None => ln.w.zeros_like()?,
                };
                candle_nn::ops::layer_norm(&x, &ln.w, &b, eps)?
            }
            NormKind::RmsNorm => candle_nn::ops::rms_norm(&x, &ln.w, eps)?,
        })
    }

    /// [`HookedTransformer::norm`] with the fused kernels (two passes instead of nine ops).
    fn norm_fused<H: Hooks>(
        &self,
        x: &Tensor,
        ln: &NormWeights,
        scale_at: HookPoint,
        normalized_at: HookPoint,
        hooks: &mut H,
    ) -> Result<Tensor> {
        let layer_norm = self.cfg.norm == NormKind::LayerNorm;
        let mut stats = norm_stats(x, layer_norm, self.cfg.eps)?;
        if hooks.wants(scale_at) {
            let scale = stats.narrow(D::Minus1, 1, 1)?.contiguous()?;
            let new = hook(hooks, scale_at, scale.clone())?;
            if new.id() != scale.id() {
                stats = Tensor::cat(&[&stats.narrow(D::Minus1, 0, 1)?, &new], D::Minus1)?;
            }
        }
        if !layer_norm {
            let y = hook(hooks, normalized_at, norm_apply(x, &stats, None)?)?;
            return Ok(y.broadcast_mul(&ln.w)?);
        }
        let b = match &ln.b {
            Some(b) => b.clone(),
            None => ln.w.zeros_like()?,
        };
        let y = norm_apply(x, &stats, Some(&Tensor::stack(&[&ln.w, &b], 0)?))?;
        hook(hooks, normalized_at, y)
    }

    /// Block `l`'s first norm applied to `x` (with its hooks).
    fn apply_ln1<H: Hooks>(&self, l: usize, x: &Tensor, hooks: &mut H) -> Result<Tensor> {
        let ln = &self.weights.blocks[l].ln1;
        self.norm(
            x,
            ln,
            HookPoint::Ln1Scale(l),
            HookPoint::Ln1Normalized(l),
            hooks,
        )
    }

    /// Block `l`'s second norm applied to `x` (with its hooks).
    fn apply_ln2<H: Hooks>(&self, l: usize, x: &Tensor, hooks: &mut H) -> Result<Tensor> {
        let ln = self.weights.blocks[l]
            .ln2
            .as_ref()
            .ok_or_else(|| Error::Invalid(format!("block {l} has no ln2")))?;
        self.norm(
            x,
            ln,
            HookPoint::Ln2Scale(l),
            HookPoint::Ln2Normalized(l),
            hooks,
        )
    }

    fn block<H: Hooks>(
        &self,
        l: usize,
        x: Tensor,
        mask: Option<&AttnMask>,
        rope: Option<&(Tensor, Tensor)>,
        kv: Option<&mut LayerKv>,
        hooks: &mut H,
    ) -> Result<Tensor> {
        let has_mlp = self.weights.blocks[l].mlp.is_some();
        let resid = hook(hooks, HookPoint::ResidPre(l), x)?;
        if self.cfg.post_norm {
            let attn_out = self.attention(l, &resid, mask, rope, kv, hooks)?;
            let mid = hook(hooks, HookPoint::ResidMid(l), (resid + attn_out)?)?;
            let normed = self.apply_ln1(l, &mid, hooks)?;
            let post = if has_mlp {
                (&normed + self.mlp(l, &normed, hooks)?)?
            } else {
                normed
            };
            let post = hook(hooks, HookPoint::ResidPost(l), post)?;
            return self.apply_ln2(l, &post, hooks);
        }
        let normed = self.apply_ln1(l, &resid, hooks)?;
        let attn_out = self.attention(l, &normed, mask, rope, kv, hooks)?;
        let blk = &self.weights.blocks[l];
        let attn_out = self.output_norm(
            blk.ln1_post.as_ref(),
            attn_out,
            HookPoint::Ln1PostScale(l),
            hooks,
        )?;
        let post = if !has_mlp {
            (resid + attn_out)?
        } else if self.cfg.parallel_residual {
            let mlp_out = self.mlp(l, &self.apply_ln2(l, &resid, hooks)?, hooks)?;
            ((resid + attn_out)? + mlp_out)?
        } else {
            let mid = hook(hooks, HookPoint::ResidMid(l), (resid + attn_out)?)?;
            let mlp_out = self.mlp(l, &self.apply_ln2(l, &mid, hooks)?, hooks)?;
            let mlp_out = self.output_norm(
                blk.ln2_post.as_ref(),
                mlp_out,
                HookPoint::Ln2PostScale(l),
                hooks,
            )?;
            (mid + mlp_out)?
        };
        hook(hooks, HookPoint::ResidPost(l), post)
    }

    /// A sublayer output through its norm `ln` (Gemma's `ln1_post` / `ln2_post`, hooked at
    /// `scale_at` and the `hook_normalized` after it), or unchanged when there is none.
    fn output_norm<H: Hooks>(
        &self,
        ln: Option<&NormWeights>,
        out: Tensor,
        scale_at: HookPoint,
        hooks: &mut H,
    ) -> Result<Tensor> {
        let normalized_at = match scale_at {
            HookPoint::Ln1PostScale(l) => HookPoint::Ln1PostNormalized(l),
            HookPoint::Ln2PostScale(l) => HookPoint::Ln2PostNormalized(l),
            other => other,
        };
        match ln {
            Some(ln) => self.norm(&out, ln, scale_at, normalized_at, hooks),
            None => Ok(out),
        }
    }

    /// Rotates the first `rotary.dim` channels of `x: [batch, pos, heads, d_head]`.
    fn apply_rope(&self, x: &Tensor, (cos, sin): &(Tensor, Tensor)) -> Result<Tensor> {
        let dh = self.cfg.d_head;
        let half = cos.dim(3)?;
        if use_device_op(x) {
            // candle-nn's fused rotary kernel for `[batch, pos, head, d]` rows (tables
            // `[pos, d / 2]`); a partial rotary dimension leaves the rest of each head as it is.
            let p = cos.dim(1)?;
            let table = |t: &Tensor| t.reshape((p, half))?.to_dtype(x.dtype())?.contiguous();
            let rotated = x.narrow(3, 0, 2 * half)?.contiguous()?;
            let r = candle_nn::rotary_emb::rope_thd(&rotated, &table(cos)?, &table(sin)?)?;
            if 2 * half == dh {
                return Ok(r);
            }
            return Ok(Tensor::cat(
                &[&r, &x.narrow(3, 2 * half, dh - 2 * half)?],
                3,
            )?);
        }
        if use_f32_kernel(x) && cos.dtype() == DType::F32 {
            return Ok(metarep_kernels::rotary::rope(x, cos, sin)?);
        }
        let x1 = x.narrow(3, 0, half)?;
        let x2 = x.narrow(3, half, half)?;
        let r1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
        let r2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
        if 2 * half == dh {
            Ok(Tensor::cat(&[r1, r2], 3)?)
        } else {
            Ok(Tensor::cat(
                &[r1, r2, x.narrow(3, 2 * half, dh - 2 * half)?],
                3,
            )?)
        }
    }

    fn attention<H: Hooks>(
        &self,
        l: usize,
        x: &Tensor,
        mask: Option<&AttnMask>,
        rope: Option<&(Tensor, Tensor)>,
        kv: Option<&mut LayerKv>,
        hooks: &mut H,
    ) -> Result<Tensor> {
        let a = &self.weights.blocks[l].attn;
        let cfg = &self.cfg;
        let (b, p, d) = x.dims3()?;
        let (h, hk, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        let x2 = x.reshape((b * p, d))?;
        let q = linear(&x2, &a.w_q, a.b_q.as_ref())?.reshape((b, p, h, dh))?;
        let q = hook(hooks, HookPoint::Q(l), q)?;
        let k = linear(&x2, &a.w_k, a.b_k.as_ref())?.reshape((b, p, hk, dh))?;
        let k = hook(hooks, HookPoint::K(l), k)?;
        let v = linear(&x2, &a.w_v, a.b_v.as_ref())?.reshape((b, p, hk, dh))?;
        let v = hook(hooks, HookPoint::V(l), v)?;
        let (q, k) = match (&a.q_ln, &a.k_ln) {
            (Some(q_ln), Some(k_ln)) => (
                self.norm(
                    &q,
                    q_ln,
                    HookPoint::QLnScale(l),
                    HookPoint::QLnNormalized(l),
                    hooks,
                )?,
                self.norm(
                    &k,
                    k_ln,
                    HookPoint::KLnScale(l),
                    HookPoint::KLnNormalized(l),
                    hooks,
                )?,
            ),
            _ => (q, k),
        };
        let (q, k) = match rope {
            Some(tables) => {
                let q = hook(hooks, HookPoint::RotQ(l), self.apply_rope(&q, tables)?)?;
                let k = hook(hooks, HookPoint::RotK(l), self.apply_rope(&k, tables)?)?;
                (q, k)
            }
            None => (q, k),
        };
        // Without hooked scores the masked softmax scales, masks and normalises the raw scores
        // in one kernel (on a GPU; on the CPU in f32). On the CPU, hooked scores are scaled and
        // masked by the same kernel, and normalised by it when the hook hands them back as they
        // were (a cache): the pattern is then the plain pass's, bit for bit.
        let cpu_kernel = q.device().is_cpu() && q.dtype() == DType::F32 && !q.track_op();
        let hooked = hooks.wants(HookPoint::AttnScores(l));
        let fused = cpu_kernel || (use_device_op(&q) && !hooked);
        // [batch, head, pos, d_head]; else the score scale (1/√d_head) rides along q's copy.
        let qh = match fused {
            true => swap_axes12(&q)?,
            false => q.transpose(1, 2)?.affine(cfg.score_scale(), 0.0)?,
        };
        let (k, v) = (swap_axes12(&k)?, swap_axes12(&v)?);
        let (k, v) = match kv {
            Some(slot) => slot.append(k, v)?,
            None => (k, v),
        };
        let kh = repeat_kv(k, cfg.kv_group())?;
        let vh = repeat_kv(v, cfg.kv_group())?;
        let scores = matmul(&qh.contiguous()?, &kh.t()?)?;
        let (bias, causal) = (
            mask.and_then(|m| m.bias.as_ref()),
            mask.and_then(|m| m.causal),
        );
        let pattern = if fused && !hooked {
            masked_softmax(&scores, bias, causal, cfg.score_scale())?
        } else if fused {
            let masked = masked_scores(&scores, bias, causal, cfg.score_scale())?;
            let seen = hook(hooks, HookPoint::AttnScores(l), masked.clone())?;
            match seen.id() == masked.id() {
                true => masked_softmax(&seen, None, causal, 1.0)?,
                false => softmax_f32(&seen, mask.is_some_and(|m| m.empty_rows))?,
            }
        } else {
            let scores = match mask {
                Some(m) => scores.broadcast_add(&m.additive(&scores)?)?,
                None => scores,
            };
            let scores = hook(hooks, HookPoint::AttnScores(l), scores)?;
            softmax_f32(&scores, mask.is_some_and(|m| m.empty_rows))?
        };
        let pattern = hook(hooks, HookPoint::Pattern(l), pattern)?;
        let z = swap_axes12(&matmul(&pattern, &vh)?)?;
        let z = hook(hooks, HookPoint::Z(l), z)?;
        let out = if hooks.wants(HookPoint::HeadResult(l)) {
            let result = self.head_results(l, &z)?;
            let result = hook(hooks, HookPoint::HeadResult(l), result)?;
            let summed = result.sum(2)?;
            match &a.b_o {
                Some(bo) => summed.broadcast_add(bo)?,
                None => summed,
            }
        } else {
            linear(&z.reshape((b * p, h * dh))?, &a.w_o, a.b_o.as_ref())?.reshape((b, p, d))?
        };
        hook(hooks, HookPoint::AttnOut(l), out)
    }

    /// Each head's output `z_h W_O[h]` `[batch, pos, n_heads, d_model]` (no `b_O`) from
    /// `z: [batch, pos, n_heads, d_head]` of layer `l`.
    pub fn head_results(&self, l: usize, z: &Tensor) -> Result<Tensor> {
        let (b, p, h, dh) = z.dims4()?;
        let d = self.cfg.d_model;
        let zt = z.reshape((b * p, h, dh))?.transpose(0, 1)?.contiguous()?;
        let w_o = self.w_o(l)?;
        let r = zt.matmul(&w_o)?; // [h, b·p, d]
        Ok(r.transpose(0, 1)?.reshape((b, p, h, d))?)
    }

    fn mlp<H: Hooks>(&self, l: usize, x: &Tensor, hooks: &mut H) -> Result<Tensor> {
        let m = self.weights.blocks[l]
            .mlp
            .as_ref()
            .ok_or_else(|| Error::Invalid(format!("block {l} has no MLP")))?;
        let (b, p, d) = x.dims3()?;
        let dm = self.cfg.d_mlp;
        let x2 = x.reshape((b * p, d))?;
        let post = match &m.w_gate {
            Some(w_gate) => {
                let pre = hook(
                    hooks,
                    HookPoint::MlpPre(l),
                    linear(&x2, w_gate, None)?.reshape((b, p, dm))?,
                )?;
                let lin = linear(&x2, &m.w_in, m.b_in.as_ref())?.reshape((b, p, dm))?;
                let lin = hook(hooks, HookPoint::MlpPreLinear(l), lin)?;
                gated_activation(&pre, &lin, self.cfg.act)?
            }
            None => {
                let pre = linear(&x2, &m.w_in, m.b_in.as_ref())?.reshape((b, p, dm))?;
                let pre = hook(hooks, HookPoint::MlpPre(l), pre)?;
                activation(&pre, self.cfg.act)?
            }
        };
        let post = hook(hooks, HookPoint::MlpPost(l), post)?;
        let out =
            linear(&post.reshape((b * p, dm))?, &m.w_out, m.b_out.as_ref())?.reshape((b, p, d))?;
        hook(hooks, HookPoint::MlpOut(l), out)
    }
}

/// `cap · tanh(x / cap)` (Gemma's soft-capping of the logits).
fn soft_cap(x: &Tensor, cap: f64) -> Result<Tensor> {
    Ok(x.affine(1.0 / cap, 0.0)?.tanh()?.affine(cap, 0.0)?)
}

/// The keys and values of every layer of the positions a decoder has already run, for
/// [`HookedTransformer::run_cached`] (generation without recomputing the prefix).
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    /// The positions of the keys held, in order.
    positions: Vec<usize>,
}

impl KvCache {
    /// An empty cache for `model`.
    pub fn new(model: &HookedTransformer) -> Self {
        KvCache {
            layers: vec![LayerKv::default(); model.cfg.n_layers],
            positions: Vec::new(),
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// The first position after the last one held (`len()` for a cache filled by token runs).
    fn next_position(&self) -> usize {
        self.positions.last().map_or(0, |p| p + 1)
    }

    /// The cache of the first `len` positions only (≤ [`KvCache::len`]), sharing nothing it
    /// would write to: a prefix many continuations can start from.
    pub fn truncated(&self, len: usize) -> Result<KvCache> {
        if len > self.len() {
            return Err(Error::Invalid(format!(
                "cannot keep {len} positions of a cache holding {}",
                self.len()
            )));
        }
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let kv = match (&l.kv, len) {
                    (_, 0) | (None, _) => None,
                    (Some((k, v)), _) => Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?)),
                };
                Ok(LayerKv { kv })
            })
            .collect::<Result<_>>()?;
        Ok(KvCache {
            layers,
            positions: self.positions[..len].to_vec(),
        })
    }
}

/// One layer's cached keys and values `[batch, kv_heads, pos, d_head]` (keys after rotary).
#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    kv: Option<(Tensor, Tensor)>,
}

impl LayerKv {
    /// Appends the new keys and values along the positions; returns all of them.
    fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let all = match self.kv.take() {
            Some((k0, v0)) => (Tensor::cat(&[&k0, &k], 2)?, Tensor::cat(&[&v0, &v], 2)?),
            None => (k, v),
        };
        self.kv = Some(all.clone());
        Ok(all)
    }
}

/// Repeats each key/value head `group` times along dim 1 (grouped-query attention).
fn repeat_kv(x: Tensor, group: usize) -> Result<Tensor> {
    if group == 1 {
        return Ok(x);
    }
    let (b, hk, p, dh) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, hk, group, p, dh))?
        .reshape((b, hk * group, p, dh))?)
}

/// TransformerLens-style weight accessors (`W_Q` → [`HookedTransformer::w_q`], ...), in
/// TransformerLens shapes. Key/value accessors repeat grouped heads to `n_heads`, as
/// TransformerLens's `W_K` does.
impl HookedTransformer {
    fn layer(&self, l: usize) -> Result<&crate::weights::BlockWeights> {
        self.weights.blocks.get(l).ok_or_else(|| {
            Error::Invalid(format!(
                "layer {l} is out of range ({} layers)",
                self.cfg.n_layers
            ))
        })
    }

    fn heads_in(&self, t: &Tensor, n: usize) -> Result<Tensor> {
        let (d, dh) = (self.cfg.d_model, self.cfg.d_head);
        let t = t.reshape((d, n, dh))?.permute((1, 0, 2))?.contiguous()?;
        self.repeat_heads(t, n)
    }

    fn repeat_heads(&self, t: Tensor, n: usize) -> Result<Tensor> {
        let group = self.cfg.n_heads / n;
        if group == 1 {
            return Ok(t);
        }
        let mut dims = t.dims().to_vec();
        let mut bdims = dims.clone();
        bdims.insert(1, group);
        dims[0] *= group;
        Ok(t.unsqueeze(1)?.broadcast_as(bdims)?.reshape(dims)?)
    }

    fn bias_heads(&self, b: Option<&Tensor>, n: usize) -> Result<Tensor> {
        let t = self.or_zeros(b, n * self.cfg.d_head)?;
        self.repeat_heads(t.reshape((n, self.cfg.d_head))?, n)
    }

    /// `b`, or zeros of length `n` when the model has no such bias.
    fn or_zeros(&self, b: Option<&Tensor>, n: usize) -> Result<Tensor> {
        match b {
            Some(b) => Ok(b.clone()),
            None => Ok(Tensor::zeros(n, self.dtype(), self.device())?),
        }
    }

    /// Token embedding `W_E: [d_vocab, d_model]`.
    pub fn w_e(&self) -> &Tensor {
        &self.weights.w_e
    }

    /// Learned positions `W_pos: [n_ctx, d_model]` (models with learned positions).
    pub fn w_pos(&self) -> Option<&Tensor> {
        self.weights.w_pos.as_ref()
    }

    /// Unembedding `W_U: [d_model, d_vocab]` (models with a head).
    pub fn w_u(&self) -> Option<&Tensor> {
        self.w_u.as_ref()
    }

    /// Unembedding bias `b_U: [d_vocab]` (zeros when the head has none).
    pub fn b_u(&self) -> Result<Tensor> {
        match &self.weights.b_u {
            Some(b) => Ok(b.clone()),
            None => Ok(Tensor::zeros(
                self.cfg.d_vocab,
                self.dtype(),
                self.device(),
            )?),
        }
    }

    /// `W_Q[l]: [n_heads, d_model, d_head]`.
    pub fn w_q(&self, l: usize) -> Result<Tensor> {
        self.heads_in(&self.layer(l)?.attn.w_q, self.cfg.n_heads)
    }

    /// `W_K[l]: [n_heads, d_model, d_head]` (grouped heads repeated).
    pub fn w_k(&self, l: usize) -> Result<Tensor> {
        self.heads_in(&self.layer(l)?.attn.w_k, self.cfg.n_kv_heads)
    }

    /// `W_V[l]: [n_heads, d_model, d_head]` (grouped heads repeated).
    pub fn w_v(&self, l: usize) -> Result<Tensor> {
        self.heads_in(&self.layer(l)?.attn.w_v, self.cfg.n_kv_heads)
    }

    /// `W_O[l]: [n_heads, d_head, d_model]`.
    pub fn w_o(&self, l: usize) -> Result<Tensor> {
        let c = &self.cfg;
        Ok(self
            .layer(l)?
            .attn
            .w_o
            .reshape((c.n_heads, c.d_head, c.d_model))?)
    }

    /// `b_Q[l]: [n_heads, d_head]` (zeros when absent).
    pub fn b_q(&self, l: usize) -> Result<Tensor> {
        self.bias_heads(self.layer(l)?.attn.b_q.as_ref(), self.cfg.n_heads)
    }

    /// `b_K[l]: [n_heads, d_head]` (zeros when absent; grouped heads repeated).
    pub fn b_k(&self, l: usize) -> Result<Tensor> {
        self.bias_heads(self.layer(l)?.attn.b_k.as_ref(), self.cfg.n_kv_heads)
    }

    /// `b_V[l]: [n_heads, d_head]` (zeros when absent; grouped heads repeated).
    pub fn b_v(&self, l: usize) -> Result<Tensor> {
        self.bias_heads(self.layer(l)?.attn.b_v.as_ref(), self.cfg.n_kv_heads)
    }

    /// `b_O[l]: [d_model]` (zeros when absent).
    pub fn b_o(&self, l: usize) -> Result<Tensor> {
        match &self.layer(l)?.attn.b_o {
            Some(b) => Ok(b.clone()),
            None => Ok(Tensor::zeros(
                self.cfg.d_model,
                self.dtype(),
                self.device(),
            )?),
        }
    }

    fn mlp_weights(&self, l: usize) -> Result<&crate::weights::MlpWeights> {
        self.layer(l)?
            .mlp
            .as_ref()
            .ok_or_else(|| Error::Invalid(format!("layer {l} has no MLP (attention-only model)")))
    }

    /// `W_in[l]: [d_model, d_mlp]`.
    pub fn w_in(&self, l: usize) -> Result<Tensor> {
        Ok(self.mlp_weights(l)?.w_in.clone())
    }

    /// `W_gate[l]: [d_model, d_mlp]` (gated MLPs).
    pub fn w_gate(&self, l: usize) -> Result<Option<Tensor>> {
        Ok(self.mlp_weights(l)?.w_gate.clone())
    }

    /// `W_out[l]: [d_mlp, d_model]`.
    pub fn w_out(&self, l: usize) -> Result<Tensor> {
        Ok(self.mlp_weights(l)?.w_out.clone())
    }

    /// `b_in[l]: [d_mlp]` (zeros when absent).
    pub fn b_in(&self, l: usize) -> Result<Tensor> {
        self.or_zeros(self.mlp_weights(l)?.b_in.as_ref(), self.cfg.d_mlp)
    }

    /// `b_out[l]: [d_model]` (zeros when absent).
    pub fn b_out(&self, l: usize) -> Result<Tensor> {
        match &self.mlp_weights(l)?.b_out {
            Some(b) => Ok(b.clone()),
            None => Ok(Tensor::zeros(
                self.cfg.d_model,
                self.dtype(),
                self.device(),
            )?),
        }
    }

    /// The final norm's weights (`ln_final.w`, `ln_final.b`).
    pub fn ln_final(&self) -> Option<&NormWeights> {
        self.weights.ln_final.as_ref()
    }

    /// Block `l`'s first norm (`ln1`).
    pub fn ln1(&self, l: usize) -> Result<&NormWeights> {
        Ok(&self.layer(l)?.ln1)
    }

    /// Block `l`'s second norm (`ln2`), when it has one.
    pub fn ln2(&self, l: usize) -> Result<Option<&NormWeights>> {
        Ok(self.layer(l)?.ln2.as_ref())
    }
}

/// An attention mask: the additive bias the scores get and, on a GPU, the causal rule applied
/// by the masked softmax; and whether some query sees no key (its softmax row must come out as
/// zeros).
#[derive(Debug, Clone)]
struct AttnMask {
    /// `[batch or 1, 1, q or 1, k]`, 0 or `-inf` (on a GPU in f32, else the model's dtype).
    bias: Option<Tensor>,
    /// Query `i` sees keys `≤ i + shift` (not part of `bias`: the softmax kernels apply it, the
    /// unfused path adds it to the bias).
    causal: Option<usize>,
    /// Some query sees no key.
    empty_rows: bool,
}

impl AttnMask {
    /// The whole mask as one additive bias in the dtype of `scores` (`[batch, heads, q, k]`),
    /// for the unfused path; on a GPU expanded to the scores' shape (candle's GPU add of a
    /// broadcast operand does index arithmetic per element, ten times a plain add).
    fn additive(&self, scores: &Tensor) -> Result<Tensor> {
        let (b, h, q, k) = scores.dims4()?;
        let (dev, dtype) = (scores.device(), scores.dtype());
        let causal = match self.causal {
            Some(shift) => Some(causal_bias(q, k, shift, DType::F32, dev)?),
            None => None,
        };
        let bias = match (&self.bias, causal) {
            (Some(m), Some(c)) => m.broadcast_add(&c)?,
            (Some(m), None) => m.clone(),
            (None, Some(c)) => c,
            (None, None) => return Err(Error::Invalid("an attention mask hides nothing".into())),
        };
        let bias = bias.to_dtype(dtype)?;
        if dev.is_cpu() {
            return Ok(bias);
        }
        Ok(bias.broadcast_as((b, h, q, k))?.contiguous()?)
    }
}
