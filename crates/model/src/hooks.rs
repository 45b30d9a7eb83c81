//! Hook points with TransformerLens names and shapes, filters over them, and the [`Hooks`] trait
//! through which a forward pass lets callers read or replace activations.
//!
//! | name | variant | shape |
//! |---|---|---|
//! | `hook_embed` | [`HookPoint::Embed`] | `[batch, pos, d_model]` |
//! | `hook_pos_embed` | [`HookPoint::PosEmbed`] | `[batch, pos, d_model]` |
//! | `hook_token_type_embed` | [`HookPoint::TokenTypeEmbed`] | `[batch, pos, d_model]` |
//! | `embed.ln.hook_scale` / `hook_normalized` | [`HookPoint::EmbedLnScale`] / [`HookPoint::EmbedLnNormalized`] | `[batch, pos, 1]` / `[batch, pos, d_model]` |
//! | `blocks.{l}.hook_resid_pre` / `mid` / `post` | [`HookPoint::ResidPre`] … | `[batch, pos, d_model]` |
//! | `blocks.{l}.ln1.hook_scale` / `hook_normalized` (also `ln2`) | [`HookPoint::Ln1Scale`] … | `[batch, pos, 1]` / `[batch, pos, d_model]` |
//! | `blocks.{l}.attn.hook_q` | [`HookPoint::Q`] | `[batch, pos, n_heads, d_head]` |
//! | `blocks.{l}.attn.hook_k` / `hook_v` | [`HookPoint::K`] / [`HookPoint::V`] | `[batch, pos, n_kv_heads, d_head]` |
//! | `blocks.{l}.attn.q_ln.hook_scale` / `hook_normalized` (also `k_ln`; QK-norm models) | [`HookPoint::QLnScale`] … | `[batch, pos, heads, 1]` / as `hook_q` |
//! | `blocks.{l}.attn.hook_rot_q` / `hook_rot_k` | [`HookPoint::RotQ`] / [`HookPoint::RotK`] | as `hook_q` / `hook_k` |
//! | `blocks.{l}.attn.hook_attn_scores` / `hook_pattern` | [`HookPoint::AttnScores`] / [`HookPoint::Pattern`] | `[batch, n_heads, query_pos, key_pos]` |
//! | `blocks.{l}.attn.hook_z` | [`HookPoint::Z`] | `[batch, pos, n_heads, d_head]` |
//! | `blocks.{l}.attn.hook_result` | [`HookPoint::HeadResult`] | `[batch, pos, n_heads, d_model]` (only when asked for) |
//! | `blocks.{l}.hook_attn_out` / `hook_mlp_out` | [`HookPoint::AttnOut`] / [`HookPoint::MlpOut`] | `[batch, pos, d_model]` |
//! | `blocks.{l}.ln1_post.hook_scale` / `hook_normalized` (also `ln2_post`; Gemma's sublayer output norms) | [`HookPoint::Ln1PostScale`] … | `[batch, pos, 1]` / `[batch, pos, d_model]` |
//! | `blocks.{l}.mlp.hook_pre` / `hook_pre_linear` / `hook_post` | [`HookPoint::MlpPre`] … | `[batch, pos, d_mlp]` |
//! | `ln_final.hook_scale` / `hook_normalized` | [`HookPoint::LnFinalScale`] / [`HookPoint::LnFinalNormalized`] | `[batch, pos, 1]` / `[batch, pos, d_model]` |
//!
//! Which hooks a model has depends on its architecture ([`available_hooks`]; `docs/hooks.md`
//! has the table). TransformerLens's `HookedEncoder` (BERT) spells the embedding hooks
//! `embed.hook_embed`, `embed.hook_pos_embed`, `embed.hook_token_type_embed`; those spellings
//! parse to the same variants.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// One place in the forward pass where an activation can be read or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// `hook_embed`: token embeddings `[batch, pos, d_model]`.
    Embed,
    /// `hook_pos_embed`: learned position embeddings `[batch, pos, d_model]`.
    PosEmbed,
    /// `hook_token_type_embed`: BERT segment embeddings `[batch, pos, d_model]`.
    TokenTypeEmbed,
    /// `embed.ln.hook_scale`: BERT embedding-norm scale `[batch, pos, 1]`.
    EmbedLnScale,
    /// `embed.ln.hook_normalized`: BERT embedding-norm output `[batch, pos, d_model]`.
    EmbedLnNormalized,
    /// `blocks.{l}.hook_resid_pre`: residual stream entering block `l`.
    ResidPre(usize),
    /// `blocks.{l}.hook_resid_mid`: residual after attention (sequential blocks only).
    ResidMid(usize),
    /// `blocks.{l}.hook_resid_post`: residual leaving block `l` (BERT: before its `ln2`).
    ResidPost(usize),
    /// `blocks.{l}.ln1.hook_scale` `[batch, pos, 1]`.
    Ln1Scale(usize),
    /// `blocks.{l}.ln1.hook_normalized` `[batch, pos, d_model]`.
    Ln1Normalized(usize),
    /// `blocks.{l}.ln2.hook_scale` `[batch, pos, 1]`.
    Ln2Scale(usize),
    /// `blocks.{l}.ln2.hook_normalized` `[batch, pos, d_model]`.
    Ln2Normalized(usize),
    /// `blocks.{l}.attn.hook_q` `[batch, pos, n_heads, d_head]`.
    Q(usize),
    /// `blocks.{l}.attn.hook_k` `[batch, pos, n_kv_heads, d_head]`.
    K(usize),
    /// `blocks.{l}.attn.hook_v` `[batch, pos, n_kv_heads, d_head]`.
    V(usize),
    /// `blocks.{l}.attn.q_ln.hook_scale` `[batch, pos, n_heads, 1]` (QK-norm models).
    QLnScale(usize),
    /// `blocks.{l}.attn.q_ln.hook_normalized` `[batch, pos, n_heads, d_head]`: before `w`.
    QLnNormalized(usize),
    /// `blocks.{l}.attn.k_ln.hook_scale` `[batch, pos, n_kv_heads, 1]` (QK-norm models).
    KLnScale(usize),
    /// `blocks.{l}.attn.k_ln.hook_normalized` `[batch, pos, n_kv_heads, d_head]`: before `w`.
    KLnNormalized(usize),
    /// `blocks.{l}.attn.hook_rot_q`: queries after rotary embedding.
    RotQ(usize),
    /// `blocks.{l}.attn.hook_rot_k`: keys after rotary embedding.
    RotK(usize),
    /// `blocks.{l}.attn.hook_attn_scores` `[batch, n_heads, q, k]`: scaled, masked (`-inf`).
    AttnScores(usize),
    /// `blocks.{l}.attn.hook_pattern` `[batch, n_heads, q, k]`: softmax of the scores.
    Pattern(usize),
    /// `blocks.{l}.attn.hook_z` `[batch, pos, n_heads, d_head]`: pattern-weighted values.
    Z(usize),
    /// `blocks.{l}.attn.hook_result` `[batch, pos, n_heads, d_model]`: each head's output
    /// (`z W_O`, without `b_O`); computed only when a hook or cache asks for it.
    HeadResult(usize),
    /// `blocks.{l}.hook_attn_out` `[batch, pos, d_model]` (with `b_O`; before `ln1_post`).
    AttnOut(usize),
    /// `blocks.{l}.ln1_post.hook_scale` `[batch, pos, 1]` (sublayer output norms).
    Ln1PostScale(usize),
    /// `blocks.{l}.ln1_post.hook_normalized` `[batch, pos, d_model]`: before `w`.
    Ln1PostNormalized(usize),
    /// `blocks.{l}.mlp.hook_pre` `[batch, pos, d_mlp]`: pre-activation (gate branch if gated).
    MlpPre(usize),
    /// `blocks.{l}.mlp.hook_pre_linear` `[batch, pos, d_mlp]`: the linear branch of a gated MLP.
    MlpPreLinear(usize),
    /// `blocks.{l}.mlp.hook_post` `[batch, pos, d_mlp]`: neuron activations.
    MlpPost(usize),
    /// `blocks.{l}.hook_mlp_out` `[batch, pos, d_model]` (with `b_out`; before `ln2_post`).
    MlpOut(usize),
    /// `blocks.{l}.ln2_post.hook_scale` `[batch, pos, 1]` (sublayer output norms).
    Ln2PostScale(usize),
    /// `blocks.{l}.ln2_post.hook_normalized` `[batch, pos, d_model]`: before `w`.
    Ln2PostNormalized(usize),
    /// `ln_final.hook_scale` `[batch, pos, 1]`.
    LnFinalScale,
    /// `ln_final.hook_normalized` `[batch, pos, d_model]`.
    LnFinalNormalized,
}

/// Hooks outside the blocks: (name, point).
const GLOBAL: &[(&str, HookPoint)] = &[
    ("hook_embed", HookPoint::Embed),
    ("hook_pos_embed", HookPoint::PosEmbed),
    ("hook_token_type_embed", HookPoint::TokenTypeEmbed),
    ("embed.ln.hook_scale", HookPoint::EmbedLnScale),
    ("embed.ln.hook_normalized", HookPoint::EmbedLnNormalized),
    ("ln_final.hook_scale", HookPoint::LnFinalScale),
    ("ln_final.hook_normalized", HookPoint::LnFinalNormalized),
];

/// TransformerLens `HookedEncoder` spellings accepted as aliases.
const ALIASES: &[(&str, HookPoint)] = &[
    ("embed.hook_embed", HookPoint::Embed),
    ("embed.hook_pos_embed", HookPoint::PosEmbed),
    ("embed.hook_token_type_embed", HookPoint::TokenTypeEmbed),
];

type BlockCtor = fn(usize) -> HookPoint;

/// Hooks inside block `l`, in forward order: (name after `blocks.{l}.`, constructor).
const BLOCK: &[(&str, BlockCtor)] = &[
    ("hook_resid_pre", HookPoint::ResidPre),
    ("ln1.hook_scale", HookPoint::Ln1Scale),
    ("ln1.hook_normalized", HookPoint::Ln1Normalized),
    ("attn.hook_q", HookPoint::Q),
    ("attn.hook_k", HookPoint::K),
    ("attn.hook_v", HookPoint::V),
    ("attn.q_ln.hook_scale", HookPoint::QLnScale),
    ("attn.q_ln.hook_normalized", HookPoint::QLnNormalized),
    ("attn.k_ln.hook_scale", HookPoint::KLnScale),
    ("attn.k_ln.hook_normalized", HookPoint::KLnNormalized),
    ("attn.hook_rot_q", HookPoint::RotQ),
    ("attn.hook_rot_k", HookPoint::RotK),
    ("attn.hook_attn_scores", HookPoint::AttnScores),
    ("attn.hook_pattern", HookPoint::Pattern),
    ("attn.hook_z", HookPoint::Z),
    ("attn.hook_result", HookPoint::HeadResult),
    ("hook_attn_out", HookPoint::AttnOut),
    ("ln1_post.hook_scale", HookPoint::Ln1PostScale),
    ("ln1_post.hook_normalized", HookPoint::Ln1PostNormalized),
    ("hook_resid_mid", HookPoint::ResidMid),
    ("ln2.hook_scale", HookPoint::Ln2Scale),
    ("ln2.hook_normalized", HookPoint::Ln2Normalized),
    ("mlp.hook_pre", HookPoint::MlpPre),
    ("mlp.hook_pre_linear", HookPoint::MlpPreLinear),
    ("mlp.hook_post", HookPoint::MlpPost),
    ("hook_mlp_out", HookPoint::MlpOut),
    ("ln2_post.hook_scale", HookPoint::Ln2PostScale),
    ("ln2_post.hook_normalized", HookPoint::Ln2PostNormalized),
    ("hook_resid_post", HookPoint::ResidPost),
];

impl HookPoint {
    /// The block this hook belongs to (`None` for embedding and final-norm hooks).
    pub fn layer(&self) -> Option<usize> {
        use HookPoint as H;
        match *self {
            H::Embed
            | H::PosEmbed
            | H::TokenTypeEmbed
            | H::EmbedLnScale
            | H::EmbedLnNormalized
            | H::LnFinalScale
            | H::LnFinalNormalized => None,
            H::ResidPre(l)
            | H::ResidMid(l)
            | H::ResidPost(l)
            | H::Ln1Scale(l)
            | H::Ln1Normalized(l)
            | H::Ln2Scale(l)
            | H::Ln2Normalized(l)
            | H::Q(l)
            | H::K(l)
            | H::V(l)
            | H::QLnScale(l)
            | H::QLnNormalized(l)
            | H::KLnScale(l)
            | H::KLnNormalized(l)
            | H::Ln1PostScale(l)
            | H::Ln1PostNormalized(l)
            | H::Ln2PostScale(l)
            | H::Ln2PostNormalized(l)
            | H::RotQ(l)
            | H::RotK(l)
            | H::AttnScores(l)
            | H::Pattern(l)
            | H::Z(l)
            | H::HeadResult(l)
            | H::AttnOut(l)
            | H::MlpPre(l)
            | H::MlpPreLinear(l)
            | H::MlpPost(l)
            | H::MlpOut(l) => Some(l),
        }
    }

    /// The TransformerLens name (`blocks.3.attn.hook_z`, `hook_embed`, ...).
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// The same kind of hook at block `l` (unchanged for hooks outside the blocks).
    pub fn at_layer(&self, l: usize) -> HookPoint {
        match self.layer() {
            None => *self,
            Some(_) => {
                let suffix = self.suffix();
                BLOCK
                    .iter()
                    .find(|(s, _)| *s == suffix)
                    .map(|(_, ctor)| ctor(l))
                    .unwrap_or(*self)
            }
        }
    }

    /// The name without the `blocks.{l}.` prefix.
    fn suffix(&self) -> &'static str {
        if let Some((name, _)) = GLOBAL.iter().find(|(_, p)| p == self) {
            return name;
        }
        let l = self.layer().unwrap_or(0);
        BLOCK
            .iter()
            .find(|(_, ctor)| ctor(l) == *self)
            .map(|(s, _)| *s)
            .unwrap_or("?")
    }

    /// Whether a model with `cfg` runs this hook (`hook_result` counts: it runs when asked).
    pub fn is_available(&self, cfg: &ModelConfig) -> bool {
        use HookPoint as H;
        if let Some(l) = self.layer() {
            if l >= cfg.n_layers {
                return false;
            }
        }
        let mlp = cfg.has_mlp();
        match self {
            H::Embed => true,
            H::PosEmbed => cfg.learned_positions,
            H::TokenTypeEmbed => cfg.n_token_types > 0,
            H::EmbedLnScale | H::EmbedLnNormalized => cfg.post_norm,
            H::LnFinalScale | H::LnFinalNormalized => cfg.final_norm,
            H::ResidMid(_) => !cfg.parallel_residual && (mlp || cfg.post_norm),
            H::Ln2Scale(_) | H::Ln2Normalized(_) => mlp || cfg.post_norm,
            H::RotQ(_) | H::RotK(_) => cfg.rotary.is_some(),
            H::MlpPre(_) | H::MlpPost(_) | H::MlpOut(_) => mlp,
            H::MlpPreLinear(_) => mlp && cfg.gated_mlp,
            H::QLnScale(_) | H::QLnNormalized(_) | H::KLnScale(_) | H::KLnNormalized(_) => {
                cfg.qk_norm
            }
            H::Ln1PostScale(_) | H::Ln1PostNormalized(_) => cfg.post_sublayer_norms,
            H::Ln2PostScale(_) | H::Ln2PostNormalized(_) => cfg.post_sublayer_norms && mlp,
            _ => true,
        }
    }

    /// Parses a name and checks that a model with `cfg` has this hook; errors name the hook.
    pub fn parse_for(name: &str, cfg: &ModelConfig) -> Result<HookPoint> {
        let p: HookPoint = name.parse()?;
        p.check_available(cfg)?;
        Ok(p)
    }

    /// An error naming this hook unless a model with `cfg` has it.
    pub fn check_available(&self, cfg: &ModelConfig) -> Result<()> {
        if self.is_available(cfg) {
            return Ok(());
        }
        let reason = match self.layer() {
            Some(l) if l >= cfg.n_layers => {
                format!(
                    "layer {l} is out of range (the model has {} layers)",
                    cfg.n_layers
                )
            }
            _ => format!(
                "a {:?} model with this configuration has no such hook",
                cfg.family
            ),
        };
        Err(Error::UnknownHook {
            name: self.to_string(),
            reason,
        })
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.layer() {
            None => f.write_str(self.suffix()),
            Some(l) => write!(f, "blocks.{l}.{}", self.suffix()),
        }
    }
}

impl FromStr for HookPoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let unknown = |reason: &str| Error::UnknownHook {
            name: s.to_string(),
            reason: reason.to_string(),
        };
        if let Some((_, p)) = GLOBAL.iter().chain(ALIASES).find(|(n, _)| *n == s) {
            return Ok(*p);
        }
        let rest = s
            .strip_prefix("blocks.")
            .ok_or_else(|| unknown("not a TransformerLens hook name (see docs/hooks.md)"))?;
        let (layer, suffix) = rest
            .split_once('.')
            .ok_or_else(|| unknown("expected blocks.{layer}.{hook}"))?;
        let l: usize = layer
            .parse()
            .map_err(|_| unknown("the layer after `blocks.` must be a non-negative integer"))?;
        BLOCK
            .iter()
            .find(|(n, _)| *n == suffix)
            .map(|(_, ctor)| ctor(l))
            .ok_or_else(|| unknown("no block hook has this name (see docs/hooks.md)"))
    }
}

/// Every hook a model with `cfg` has, in forward order (including `hook_result`).
pub fn available_hooks(cfg: &ModelConfig) -> Vec<HookPoint> {
    let mut out = Vec::new();
    let global = |p: HookPoint, out: &mut Vec<HookPoint>| {
        if p.is_available(cfg) {
            out.push(p);
        }
    };
    for p in [
        HookPoint::Embed,
        HookPoint::PosEmbed,
        HookPoint::TokenTypeEmbed,
        HookPoint::EmbedLnScale,
        HookPoint::EmbedLnNormalized,
    ] {
        global(p, &mut out);
    }
    for l in 0..cfg.n_layers {
        for (_, ctor) in BLOCK {
            global(ctor(l), &mut out);
        }
    }
    global(HookPoint::LnFinalScale, &mut out);
    global(HookPoint::LnFinalNormalized, &mut out);
    out
}

/// Which hooks to cache or intervene on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookFilter {
    /// Every hook the model runs by default (all but `hook_result`, which is computed only when
    /// named; TransformerLens's `use_attn_result = False`).
    All,
    /// These points exactly.
    Points(Vec<HookPoint>),
    /// Glob patterns over hook names (`*` any run of characters, `?` one character,
    /// `[..]` a class), e.g. `blocks.*.hook_resid_post`. `hook_result` is matched only by
    /// patterns that spell out `hook_result`.
    Patterns(Vec<String>),
}

impl HookFilter {
    /// A filter from glob patterns.
    pub fn patterns<S: AsRef<str>>(patterns: &[S]) -> Self {
        HookFilter::Patterns(patterns.iter().map(|s| s.as_ref().to_string()).collect())
    }

    /// The set of hooks of a model with `cfg` this filter selects; an unknown or unavailable
    /// point, a malformed pattern or a pattern matching no hook is an error naming it.
    pub fn resolve(&self, cfg: &ModelConfig) -> Result<HashSet<HookPoint>> {
        let all = available_hooks(cfg);
        match self {
            HookFilter::All => Ok(all
                .into_iter()
                .filter(|p| !matches!(p, HookPoint::HeadResult(_)))
                .collect()),
            HookFilter::Points(points) => {
                for p in points {
                    p.check_available(cfg)?;
                }
                Ok(points.iter().copied().collect())
            }
            HookFilter::Patterns(patterns) => {
                let mut out = HashSet::new();
                for pat in patterns {
                    let glob = glob::Pattern::new(pat).map_err(|e| Error::UnknownHook {
                        name: pat.clone(),
                        reason: format!("bad glob pattern: {e}"),
                    })?;
                    let wants_result = pat.contains("hook_result");
                    let mut matched = false;
                    for p in &all {
                        if matches!(p, HookPoint::HeadResult(_)) && !wants_result {
                            continue;
                        }
                        let name = p.to_string();
                        let alias = ALIASES.iter().find(|(_, a)| a == p).map(|(n, _)| *n);
                        if glob.matches(&name) || alias.is_some_and(|a| glob.matches(a)) {
                            out.insert(*p);
                            matched = true;
                        }
                    }
                    if !matched {
                        return Err(Error::UnknownHook {
                            name: pat.clone(),
                            reason: "the pattern matches no hook of this model".into(),
                        });
                    }
                }
                Ok(out)
            }
        }
    }
}

impl From<HookPoint> for HookFilter {
    fn from(p: HookPoint) -> Self {
        HookFilter::Points(vec![p])
    }
}

impl From<&[HookPoint]> for HookFilter {
    fn from(p: &[HookPoint]) -> Self {
        HookFilter::Points(p.to_vec())
    }
}

impl From<Vec<HookPoint>> for HookFilter {
    fn from(p: Vec<HookPoint>) -> Self {
        HookFilter::Points(p)
    }
}

impl From<&str> for HookFilter {
    fn from(pattern: &str) -> Self {
        HookFilter::Patterns(vec![pattern.to_string()])
    }
}

/// Something a forward pass hands its activations to.
///
/// The forward pass calls [`Hooks::wants`] at every hook point and [`Hooks::apply`] only where
/// it returns true, so an implementation whose `wants` is `false` (like [`NoHooks`]) compiles
/// to the plain forward pass. Optional work (`hook_result`) is done only when wanted.
pub trait Hooks {
    /// Whether this hook set reads or replaces the activation at `point`.
    fn wants(&self, point: HookPoint) -> bool;
    /// Sees the activation at `point` and returns the one the forward pass continues with
    /// (the same tensor to only read it). A replacement must keep the shape.
    fn apply(&mut self, point: HookPoint, act: Tensor) -> Result<Tensor>;
}

/// No hooks: the plain forward pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    #[inline(always)]
    fn wants(&self, _point: HookPoint) -> bool {
        false
    }
    #[inline(always)]
    fn apply(&mut self, _point: HookPoint, act: Tensor) -> Result<Tensor> {
        Ok(act)
    }
}

impl<H: Hooks + ?Sized> Hooks for &mut H {
    fn wants(&self, point: HookPoint) -> bool {
        (**self).wants(point)
    }
    fn apply(&mut self, point: HookPoint, act: Tensor) -> Result<Tensor> {
        (**self).apply(point, act)
    }
}

/// Two hook sets in sequence: `A` sees each activation first, `B` sees what `A` returned.
impl<A: Hooks, B: Hooks> Hooks for (A, B) {
    fn wants(&self, point: HookPoint) -> bool {
        self.0.wants(point) || self.1.wants(point)
    }
    fn apply(&mut self, point: HookPoint, act: Tensor) -> Result<Tensor> {
        let act = if self.0.wants(point) {
            self.0.apply(point, act)?
        } else {
            act
        };
        if self.1.wants(point) {
            self.1.apply(point, act)
        } else {
            Ok(act)
        }
    }
}

/// A hook function: sees `(point, activation)`, returns `Some(replacement)` or `None` to keep it.
pub type HookFn<'a> = Box<dyn FnMut(HookPoint, &Tensor) -> Result<Option<Tensor>> + 'a>;

enum Selector<'a> {
    Point(HookPoint),
    Where(Box<dyn Fn(HookPoint) -> bool + 'a>),
}

impl Selector<'_> {
    fn matches(&self, p: HookPoint) -> bool {
        match self {
            Selector::Point(q) => *q == p,
            Selector::Where(f) => f(p),
        }
    }
}

/// Closures attached to hook points, run in the order they were added.
///
/// ```
/// use metarep_model::hooks::{HookPoint, HookSet};
/// let mut seen = Vec::new();
/// let mut hooks = HookSet::new().add(HookPoint::Z(0), |_, z| {
///     seen.push(z.dims().to_vec());
///     Ok(None) // read only
/// });
/// # drop(hooks);
/// ```
#[derive(Default)]
pub struct HookSet<'a> {
    entries: Vec<(Selector<'a>, HookFn<'a>)>,
}

impl<'a> HookSet<'a> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `f` at `point`.
    pub fn add(
        mut self,
        point: HookPoint,
        f: impl FnMut(HookPoint, &Tensor) -> Result<Option<Tensor>> + 'a,
    ) -> Self {
        self.entries.push((Selector::Point(point), Box::new(f)));
        self
    }

    /// Adds `f` at every point for which `select` is true.
    pub fn add_where(
        mut self,
        select: impl Fn(HookPoint) -> bool + 'a,
        f: impl FnMut(HookPoint, &Tensor) -> Result<Option<Tensor>> + 'a,
    ) -> Self {
        self.entries
            .push((Selector::Where(Box::new(select)), Box::new(f)));
        self
    }

    /// Adds an already boxed hook at `point` (for hooks built by [`crate::interventions`]).
    pub fn add_boxed(mut self, point: HookPoint, f: HookFn<'a>) -> Self {
        self.entries.push((Selector::Point(point), f));
        self
    }

    /// Number of attached hooks.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no hook is attached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Hooks for HookSet<'_> {
    fn wants(&self, point: HookPoint) -> bool {
        self.entries.iter().any(|(s, _)| s.matches(point))
    }

    fn apply(&mut self, point: HookPoint, mut act: Tensor) -> Result<Tensor> {
        for (select, f) in self.entries.iter_mut() {
            if select.matches(point) {
                if let Some(new) = f(point, &act)? {
                    act = new;
                }
            }
        }
        Ok(act)
    }
}

/// Records the activations of a selected set of hooks (used by `run_with_cache`).
#[derive(Debug, Clone, Default)]
pub struct CacheHooks {
    selected: HashSet<HookPoint>,
    /// The recorded activations.
    pub acts: BTreeMap<HookPoint, Tensor>,
}

impl CacheHooks {
    /// Records exactly `selected`.
    pub fn new(selected: HashSet<HookPoint>) -> Self {
        Self {
            selected,
            acts: BTreeMap::new(),
        }
    }
}

impl Hooks for CacheHooks {
    fn wants(&self, point: HookPoint) -> bool {
        self.selected.contains(&point)
    }

    fn apply(&mut self, point: HookPoint, act: Tensor) -> Result<Tensor> {
        self.acts.insert(point, act.clone());
        Ok(act)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NormKind, Rotary};

    #[test]
    fn every_name_round_trips() {
        let mut cfg = ModelConfig::gpt2_like(3, 16, 4, 32, 8);
        cfg.gated_mlp = true;
        cfg.rotary = Some(Rotary {
            dim: 4,
            base: 1e4,
            scaling: None,
        });
        let mut points = available_hooks(&cfg);
        points.extend([
            HookPoint::TokenTypeEmbed,
            HookPoint::EmbedLnScale,
            HookPoint::EmbedLnNormalized,
        ]);
        for p in points {
            let name = p.to_string();
            assert_eq!(name.parse::<HookPoint>().unwrap(), p, "{name}");
            if let Some(l) = p.layer() {
                assert!(name.starts_with(&format!("blocks.{l}.")));
                assert_eq!(p.at_layer(7).layer(), Some(7));
            }
        }
        assert_eq!(HookPoint::Z(2).to_string(), "blocks.2.attn.hook_z");
        assert_eq!(HookPoint::MlpPost(0).to_string(), "blocks.0.mlp.hook_post");
        assert_eq!(HookPoint::LnFinalScale.to_string(), "ln_final.hook_scale");
        assert_eq!(
            "embed.hook_embed".parse::<HookPoint>().unwrap(),
            HookPoint::Embed
        );
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        for bad in [
            "blocks.0.hook_foo",
            "hook_bar",
            "blocks.x.hook_z",
            "blocks.1",
        ] {
            let err = bad.parse::<HookPoint>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
        let cfg = ModelConfig::gpt2_like(2, 16, 4, 32, 8);
        let err = HookPoint::parse_for("blocks.5.hook_resid_pre", &cfg).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = HookPoint::parse_for("blocks.0.attn.hook_rot_q", &cfg).unwrap_err();
        assert!(err.to_string().contains("hook_rot_q"), "{err}");
    }

    #[test]
    fn availability_follows_the_architecture() {
        let mut cfg = ModelConfig::gpt2_like(2, 16, 4, 32, 8);
        let gpt2 = available_hooks(&cfg);
        assert!(gpt2.contains(&HookPoint::PosEmbed) && gpt2.contains(&HookPoint::ResidMid(1)));
        assert!(!gpt2.contains(&HookPoint::RotQ(0)) && !gpt2.contains(&HookPoint::MlpPreLinear(0)));
        cfg.parallel_residual = true;
        assert!(!available_hooks(&cfg).contains(&HookPoint::ResidMid(0)));
        cfg.attn_only = true;
        cfg.parallel_residual = false;
        let attn = available_hooks(&cfg);
        assert!(!attn.contains(&HookPoint::MlpPost(0)) && !attn.contains(&HookPoint::Ln2Scale(0)));
        cfg.norm = NormKind::RmsNorm;
        assert!(available_hooks(&cfg).contains(&HookPoint::LnFinalScale));
    }

    #[test]
    fn filters_resolve_globs_and_reject_typos() {
        let cfg = ModelConfig::gpt2_like(3, 16, 4, 32, 8);
        let set = HookFilter::from("blocks.*.hook_resid_post")
            .resolve(&cfg)
            .unwrap();
        assert_eq!(set.len(), 3);
        let all = HookFilter::All.resolve(&cfg).unwrap();
        assert!(!all.iter().any(|p| matches!(p, HookPoint::HeadResult(_))));
        let star = HookFilter::from("*").resolve(&cfg).unwrap();
        assert_eq!(star, all);
        let res = HookFilter::from("blocks.1.attn.hook_result")
            .resolve(&cfg)
            .unwrap();
        assert_eq!(
            res.into_iter().collect::<Vec<_>>(),
            vec![HookPoint::HeadResult(1)]
        );
        let err = HookFilter::from("blocks.*.hook_resid_psot")
            .resolve(&cfg)
            .unwrap_err();
        assert!(err.to_string().contains("hook_resid_psot"), "{err}");
        let err = HookFilter::Points(vec![HookPoint::Q(9)])
            .resolve(&cfg)
            .unwrap_err();
        assert!(err.to_string().contains("blocks.9.attn.hook_q"), "{err}");
    }
}
