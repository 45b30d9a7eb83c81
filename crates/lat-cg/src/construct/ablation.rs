//! Ablations of the CG construction: the same weights with one class of parts removed from
//! every CG layer, to test what the proof says each part is for (`docs/cg_ablations.md` states
//! the predicted failure of each before it is measured).
//!
//! A CG layer's heads come in the order [`CgLat::build`] writes them: the kernel mat-vec head,
//! the ridge (`λ`, self-masked) head, four scalar reductions (`Σrz`, `Σzz`, `Σzp`, `Σpp`) and two
//! feature reductions (`Φᵀz`, `Φᵀp`); its MLP blocks are B1…B6 of
//! [`crate::construct::cg`]. Removing a part deletes those heads or blocks; the channel layout,
//! the setup layer and the readout stay as built, except where the part is one of them.

use candle_core::Device;

use super::cg::{CgLat, CgSpec};
use super::scaffold::SETUP_LAYERS;
use crate::error::{Error, Result};
use crate::reference::Preconditioner;

/// Head indices in a CG layer, in the order the construction writes them.
const KERNEL_HEAD: usize = 0;
const RIDGE_HEAD: usize = 1;
const SCALAR_REDUCTIONS: std::ops::Range<usize> = 2..6;
const FEATURE_REDUCTIONS: std::ops::Range<usize> = 6..8;
/// Heads and MLP blocks a CG layer has.
const CG_HEADS: usize = 8;
const CG_BLOCKS: usize = 6;

/// One class of parts of the CG construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgPart {
    /// The kernel mat-vec head (`Σ_j (φ_i·φ_j) v_j` for `v = z, p`), every CG layer.
    KernelMatVec,
    /// The ridge head (`λ v_i`, each support reading itself), every CG layer.
    Ridge,
    /// The four scalar reduction heads (`Σrz`, `Σzz`, `Σzp`, `Σpp` to supports and aggregator).
    ScalarReductions,
    /// The two feature reduction heads (`Φᵀz`, `Φᵀp`), from which `p·Ap` is formed.
    FeatureReductions,
    /// The readout head (`f = Σ_j (φ_q·φ_j) α_j` at the queries).
    Readout,
    /// MLP block `B1…B6` (1-based) of every CG layer: β, the new direction, `p·Ap` with the
    /// clears, γ, the state update, `z = d ⊙ r`.
    Block(usize),
    /// The preconditioner scaling: the setup layer of plain CG (`d = 1`) in place of Jacobi's.
    Preconditioner,
}

impl CgPart {
    /// Every part, in the order of the module docs (blocks 1…6 after the heads).
    pub fn all() -> Vec<CgPart> {
        let mut parts = vec![
            CgPart::KernelMatVec,
            CgPart::Ridge,
            CgPart::ScalarReductions,
            CgPart::FeatureReductions,
            CgPart::Readout,
        ];
        parts.extend((1..=CG_BLOCKS).map(CgPart::Block));
        parts.push(CgPart::Preconditioner);
        parts
    }

    /// A short name (`kernel mat-vec`, `B3`, …) for tables and figures.
    pub fn name(self) -> String {
        match self {
            CgPart::KernelMatVec => "kernel mat-vec head".into(),
            CgPart::Ridge => "ridge head".into(),
            CgPart::ScalarReductions => "scalar reduction heads".into(),
            CgPart::FeatureReductions => "feature reduction heads".into(),
            CgPart::Readout => "readout head".into(),
            CgPart::Block(b) => format!("MLP block B{b}"),
            CgPart::Preconditioner => "preconditioner scaling".into(),
        }
    }
}

impl CgLat {
    /// This model with `part` removed (see [`CgPart`]). The preconditioner scaling only exists
    /// in a Jacobi model; asking to remove it from a plain one, or a block outside 1…6, is an
    /// error.
    pub fn without(&self, part: CgPart, device: &Device) -> Result<CgLat> {
        let mut model = self.clone();
        let steps = self.spec.steps;
        let cg_layers = SETUP_LAYERS..SETUP_LAYERS + steps;
        for layer in &model.lat.layers[cg_layers.clone()] {
            if layer.heads.len() != CG_HEADS || layer.mlp.len() != CG_BLOCKS {
                return Err(Error::invalid(
                    "ablation",
                    format!(
                        "a CG layer has {} heads and {} MLP blocks, not the construction's {CG_HEADS} and {CG_BLOCKS}",
                        layer.heads.len(),
                        layer.mlp.len()
                    ),
                ));
            }
        }
        let heads: Vec<usize> = match part {
            CgPart::KernelMatVec => vec![KERNEL_HEAD],
            CgPart::Ridge => vec![RIDGE_HEAD],
            CgPart::ScalarReductions => SCALAR_REDUCTIONS.collect(),
            CgPart::FeatureReductions => FEATURE_REDUCTIONS.collect(),
            _ => vec![],
        };
        match part {
            CgPart::Readout => {
                let last = model.lat.layers.len() - 1;
                model.lat.layers[last].heads.clear();
            }
            CgPart::Block(b) => {
                if !(1..=CG_BLOCKS).contains(&b) {
                    return Err(Error::invalid(
                        "ablation",
                        format!("MLP block B{b} does not exist (B1…B{CG_BLOCKS})"),
                    ));
                }
                for layer in &mut model.lat.layers[cg_layers] {
                    layer.mlp.remove(b - 1);
                }
            }
            CgPart::Preconditioner => {
                if self.spec.preconditioner != Preconditioner::Jacobi {
                    return Err(Error::invalid(
                        "ablation",
                        "only a Jacobi model has a preconditioner scaling to remove",
                    ));
                }
                let plain = CgLat::build(
                    CgSpec {
                        preconditioner: Preconditioner::None,
                        ..self.spec
                    },
                    device,
                )?;
                model.lat.layers[0] = plain.lat.layers[0].clone();
            }
            _ => {
                for layer in &mut model.lat.layers[cg_layers] {
                    for &h in heads.iter().rev() {
                        layer.heads.remove(h);
                    }
                }
            }
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::TokenLayout;

    fn model(pre: Preconditioner) -> CgLat {
        let spec = CgSpec {
            layout: TokenLayout::new(4, 2).unwrap(),
            features: 3,
            lambda: 0.1,
            preconditioner: pre,
            steps: 2,
        };
        CgLat::build(spec, &Device::Cpu).unwrap()
    }

    #[test]
    fn each_part_removes_what_it_names_and_nothing_else() {
        let m = model(Preconditioner::Jacobi);
        let count = |m: &CgLat| -> Vec<(usize, usize)> {
            m.lat
                .layers
                .iter()
                .map(|l| (l.heads.len(), l.mlp.len()))
                .collect()
        };
        let intact = count(&m);
        assert_eq!(intact[1], (CG_HEADS, CG_BLOCKS));
        for (part, heads, blocks) in [
            (CgPart::KernelMatVec, 7, 6),
            (CgPart::Ridge, 7, 6),
            (CgPart::ScalarReductions, 4, 6),
            (CgPart::FeatureReductions, 6, 6),
            (CgPart::Block(3), 8, 5),
        ] {
            let c = count(&m.without(part, &Device::Cpu).unwrap());
            assert_eq!(c[1], (heads, blocks), "{part:?}");
            assert_eq!(c[2], (heads, blocks), "{part:?}");
            assert_eq!((c[0], c[3]), (intact[0], intact[3]), "{part:?}");
        }
        let no_readout = count(&m.without(CgPart::Readout, &Device::Cpu).unwrap());
        assert_eq!(no_readout[3].0, 0);
        let plain_setup = m.without(CgPart::Preconditioner, &Device::Cpu).unwrap();
        assert_eq!(
            plain_setup.lat.layers[0].mlp.len(),
            model(Preconditioner::None).lat.layers[0].mlp.len()
        );
    }

    #[test]
    fn impossible_ablations_are_errors_naming_the_part() {
        let plain = model(Preconditioner::None);
        let e = plain
            .without(CgPart::Preconditioner, &Device::Cpu)
            .unwrap_err();
        assert!(e.to_string().contains("Jacobi"), "{e}");
        let e = plain.without(CgPart::Block(7), &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("B7"), "{e}");
    }
}
