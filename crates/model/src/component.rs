//! Typed circuit components: the parts of a transformer that analyses attribute to, ablate,
//! patch and rank, named as TransformerLens names them.
//!
//! | component | string |
//! |---|---|
//! | token embedding | `embed` |
//! | learned position embedding | `pos_embed` |
//! | head `h` of layer `l` (its output `z_h W_O[h]`) | `L{l}H{h}` |
//! | attention output of layer `l` (all heads, with `b_O`) | `{l}_attn_out` |
//! | attention output bias `b_O` of layer `l` | `{l}_attn_bias` |
//! | MLP output of layer `l` (with `b_out`) | `{l}_mlp_out` |
//! | MLP neuron `n` of layer `l` | `L{l}N{n}` |
//! | the final norm's bias and the unembedding bias | `bias` |
//!
//! Strings round-trip through [`std::fmt::Display`] and [`std::str::FromStr`], and serde uses
//! the string form (so configs name components as `"L1H3"`).
//!
//! ```
//! use metarep_model::Component;
//!
//! let c: Component = "L1H3".parse()?;
//! assert_eq!(c, Component::Head { layer: 1, head: 3 });
//! assert_eq!(Component::Mlp(0).to_string(), "0_mlp_out");
//! assert!("L1X3".parse::<Component>().is_err());
//! # Ok::<(), metarep_model::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// A part of a transformer's computation that writes into the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// The token embedding (`hook_embed`).
    Embed,
    /// The learned position embedding (`hook_pos_embed`).
    PosEmbed,
    /// One attention head's output `z_h W_O[h]`.
    Head {
        /// Layer.
        layer: usize,
        /// Head.
        head: usize,
    },
    /// A layer's whole attention output (`hook_attn_out`).
    AttnOut(usize),
    /// A layer's attention output bias `b_O`.
    AttnBias(usize),
    /// A layer's MLP output (`hook_mlp_out`).
    Mlp(usize),
    /// One MLP neuron's write `post_n W_out[n]`.
    Neuron {
        /// Layer.
        layer: usize,
        /// Neuron.
        neuron: usize,
    },
    /// The final norm's bias and the unembedding bias.
    Bias,
}

impl Component {
    /// The layer the component belongs to (`None` for embeddings and the final bias).
    pub fn layer(&self) -> Option<usize> {
        match *self {
            Component::Head { layer, .. }
            | Component::Neuron { layer, .. }
            | Component::AttnOut(layer)
            | Component::AttnBias(layer)
            | Component::Mlp(layer) => Some(layer),
            Component::Embed | Component::PosEmbed | Component::Bias => None,
        }
    }

    /// Checks the component exists in a model of shape `cfg`; the error names it and the
    /// model's shape.
    pub fn check(&self, cfg: &ModelConfig) -> Result<()> {
        let fits = match *self {
            Component::Embed | Component::Bias => true,
            Component::PosEmbed => cfg.learned_positions,
            Component::Head { layer, head } => layer < cfg.n_layers && head < cfg.n_heads,
            Component::AttnOut(layer) | Component::AttnBias(layer) => layer < cfg.n_layers,
            Component::Mlp(layer) => layer < cfg.n_layers && cfg.has_mlp(),
            Component::Neuron { layer, neuron } => {
                layer < cfg.n_layers && cfg.has_mlp() && neuron < cfg.d_mlp
            }
        };
        if fits {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "component {self} is not in this model ({} layers of {} heads, {} MLP neurons{})",
            cfg.n_layers,
            cfg.n_heads,
            if cfg.has_mlp() { cfg.d_mlp } else { 0 },
            if cfg.learned_positions {
                ""
            } else {
                ", no learned positions"
            }
        )))
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Component::Embed => write!(f, "embed"),
            Component::PosEmbed => write!(f, "pos_embed"),
            Component::Head { layer, head } => write!(f, "L{layer}H{head}"),
            Component::AttnOut(l) => write!(f, "{l}_attn_out"),
            Component::AttnBias(l) => write!(f, "{l}_attn_bias"),
            Component::Mlp(l) => write!(f, "{l}_mlp_out"),
            Component::Neuron { layer, neuron } => write!(f, "L{layer}N{neuron}"),
            Component::Bias => write!(f, "bias"),
        }
    }
}

impl FromStr for Component {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "`{s}` is not a component name (embed, pos_embed, L{{l}}H{{h}}, {{l}}_attn_out, \
                 {{l}}_attn_bias, {{l}}_mlp_out, L{{l}}N{{n}}, bias)"
            ))
        };
        let num = |t: &str| -> Result<usize> {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse().map_err(|_| bad())
        };
        match s {
            "embed" => return Ok(Component::Embed),
            "pos_embed" => return Ok(Component::PosEmbed),
            "bias" => return Ok(Component::Bias),
            _ => {}
        }
        if let Some(rest) = s.strip_prefix('L') {
            if let Some((l, h)) = rest.split_once('H') {
                return Ok(Component::Head {
                    layer: num(l)?,
                    head: num(h)?,
                });
            }
            if let Some((l, n)) = rest.split_once('N') {
                return Ok(Component::Neuron {
                    layer: num(l)?,
                    neuron: num(n)?,
                });
            }
            return Err(bad());
        }
        let (l, kind) = s.split_once('_').ok_or_else(bad)?;
        let l = num(l)?;
        match kind {
            "attn_out" => Ok(Component::AttnOut(l)),
            "attn_bias" => Ok(Component::AttnBias(l)),
            "mlp_out" => Ok(Component::Mlp(l)),
            _ => Err(bad()),
        }
    }
}

impl Serialize for Component {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Component {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_string() {
        let all = [
            Component::Embed,
            Component::PosEmbed,
            Component::Head { layer: 11, head: 0 },
            Component::AttnOut(3),
            Component::AttnBias(0),
            Component::Mlp(29),
            Component::Neuron {
                layer: 2,
                neuron: 3071,
            },
            Component::Bias,
        ];
        for c in all {
            let s = c.to_string();
            assert_eq!(s.parse::<Component>().unwrap(), c, "{s}");
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<Component>(&json).unwrap(), c);
        }
        for bad in [
            "",
            "L",
            "L1",
            "LxH2",
            "L1H",
            "L1H2x",
            "1_mlp",
            "x_mlp_out",
            "L-1H2",
            "H1",
        ] {
            let e = bad.parse::<Component>().unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn check_names_a_component_outside_the_model() {
        let mut cfg = ModelConfig::gpt2_like(2, 16, 4, 10, 8);
        cfg.d_mlp = 64;
        for ok in ["L1H3", "L0N63", "1_mlp_out", "pos_embed", "bias"] {
            ok.parse::<Component>().unwrap().check(&cfg).unwrap();
        }
        for bad in ["L2H0", "L1H4", "L0N64", "2_attn_out"] {
            let e = bad.parse::<Component>().unwrap().check(&cfg).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
        cfg.attn_only = true;
        assert!(Component::Mlp(0).check(&cfg).is_err());
    }
}
