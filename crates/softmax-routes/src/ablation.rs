//! Ablations of the softmax CG constructions (Route A with shared heads, Route B): the same
//! weights with one class of parts removed from every CG step, to test the predictions of
//! `docs/cg_ablations.md` (section "The softmax routes").
//!
//! A mat-vec layer's heads are the kernel heads (Route A shared: one; Route B: the small-logit
//! head, then the uniform head) followed by the `Σrz` head; its MLP blocks are M1…M6 (rescale,
//! β, ridge, new direction, `p ⊙ Ap` with the clears, `p ← p'`). A reduction layer has the
//! `Σp·Ap` head and blocks R1…R4 (γ, update, registers, `r ⊙ z`).

use candle_core::Device;
use metarep_lat_cg::invariants::StateVectors;
use metarep_lat_cg::mask::PhaseMask;

use crate::construct::{HeadSharing, MatVec, SoftmaxCg, LAYERS_PER_STEP, SETUP_LAYERS};
use crate::error::{Error, Result};
use crate::kernel::Prompt;

/// MLP blocks of a mat-vec layer and of a reduction layer.
const MATVEC_BLOCKS: usize = 6;
const REDUCTION_BLOCKS: usize = 4;

/// One class of parts of a softmax CG construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutePart {
    /// Every kernel head of the mat-vec layers.
    KernelHeads,
    /// Route A: the aggregator as a key of the kernel head (the sink); Route B: the uniform head.
    SinkOrUniform,
    /// The `Σrz` head of each mat-vec layer.
    RzSum,
    /// The `Σp·Ap` head of each reduction layer.
    PapSum,
    /// MLP block M1…M6 (1-based) of every mat-vec layer.
    MatVecBlock(usize),
    /// MLP block R1…R4 (1-based) of every reduction layer.
    ReductionBlock(usize),
}

impl RoutePart {
    /// Every part: the heads, then M1…M6, then R1…R4.
    pub fn all() -> Vec<RoutePart> {
        let mut parts = vec![
            RoutePart::KernelHeads,
            RoutePart::SinkOrUniform,
            RoutePart::RzSum,
            RoutePart::PapSum,
        ];
        parts.extend((1..=MATVEC_BLOCKS).map(RoutePart::MatVecBlock));
        parts.extend((1..=REDUCTION_BLOCKS).map(RoutePart::ReductionBlock));
        parts
    }

    /// A short name for tables and figures (`Route A` or `Route B` decides the sink's name).
    pub fn name(self, route_b: bool) -> String {
        match self {
            RoutePart::KernelHeads => "kernel heads".into(),
            RoutePart::SinkOrUniform if route_b => "uniform head".into(),
            RoutePart::SinkOrUniform => "sink key".into(),
            RoutePart::RzSum => "Σrz head".into(),
            RoutePart::PapSum => "Σp·Ap head".into(),
            RoutePart::MatVecBlock(b) => format!("block M{b}"),
            RoutePart::ReductionBlock(b) => format!("block R{b}"),
        }
    }
}

impl SoftmaxCg {
    /// This model with `part` removed from every CG step. Only Route A with shared heads and
    /// Route B are supported (the dedicated-head variant has more heads); a block number out of
    /// range is an error.
    pub fn without(&self, part: RoutePart, device: &Device) -> Result<SoftmaxCg> {
        let kernel_heads = match &self.spec.matvec {
            MatVec::ExpKernel {
                sharing: HeadSharing::Shared,
                ..
            } => 1,
            MatVec::SmallLogit { .. } => 2,
            MatVec::ExpKernel { .. } => {
                return Err(Error::invalid(
                    "ablation",
                    "only Route A with shared heads and Route B can be ablated",
                ))
            }
        };
        let bad_block = |b: usize, n: usize, kind: char| {
            Error::invalid(
                "ablation",
                format!("block {kind}{b} does not exist ({kind}1…{kind}{n})"),
            )
        };
        let mut model = self.clone();
        let steps = self.spec.steps;
        for k in 0..steps {
            let first = SETUP_LAYERS + LAYERS_PER_STEP * k;
            let (matvec, reduction) = (first, first + 1);
            let layers = &mut model.model.layers;
            match part {
                RoutePart::KernelHeads => {
                    layers[matvec].heads.drain(..kernel_heads);
                }
                RoutePart::SinkOrUniform if kernel_heads == 2 => {
                    layers[matvec].heads.remove(1);
                }
                RoutePart::SinkOrUniform => {
                    let mask = PhaseMask::SupportToSupport.tensor(&self.spec.layout, device)?;
                    layers[matvec].heads[0].mask = mask;
                }
                RoutePart::RzSum => {
                    layers[matvec].heads.remove(kernel_heads);
                }
                RoutePart::PapSum => {
                    layers[reduction].heads.clear();
                }
                RoutePart::MatVecBlock(b) => {
                    if !(1..=MATVEC_BLOCKS).contains(&b) {
                        return Err(bad_block(b, MATVEC_BLOCKS, 'M'));
                    }
                    layers[matvec].mlp.remove(b - 1);
                }
                RoutePart::ReductionBlock(b) => {
                    if !(1..=REDUCTION_BLOCKS).contains(&b) {
                        return Err(bad_block(b, REDUCTION_BLOCKS, 'R'));
                    }
                    layers[reduction].mlp.remove(b - 1);
                }
            }
        }
        Ok(model)
    }

    /// Runs the model in f64 on `prompts` and reads every prompt's solver state after each CG
    /// step: `states[b][k]` for `k = 0…t`.
    pub fn solver_states(&self, prompts: &[Prompt]) -> Result<Vec<Vec<StateVectors>>> {
        let streams = self.run(prompts, candle_core::DType::F64)?;
        let mut states = vec![Vec::with_capacity(self.spec.steps + 1); prompts.len()];
        for k in 0..=self.spec.steps {
            let x = &streams[self.state_index(k)?];
            for (b, out) in states.iter_mut().enumerate() {
                let s = self.read_state(x, b)?;
                out.push(StateVectors {
                    alpha: s.alpha,
                    r: s.r,
                    p_prev: s.p_prev,
                });
            }
        }
        Ok(states)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route_b::{build, centred_problem, CentredSpec};
    use metarep_core::rng::seeded;

    fn route_b() -> SoftmaxCg {
        let spec = CentredSpec {
            n_support: 6,
            n_query: 2,
            features: 3,
            lambda: 0.1,
            noise: 0.1,
        };
        build(
            &centred_problem(&mut seeded(0), &spec).unwrap(),
            1e-3,
            2,
            &Device::Cpu,
        )
        .unwrap()
    }

    #[test]
    fn each_part_removes_what_it_names_in_every_step() {
        let m = route_b();
        let count = |m: &SoftmaxCg, layer: usize| {
            let l = &m.model.layers[layer];
            (l.heads.len(), l.mlp.len())
        };
        let (matvec, reduction) = (count(&m, 1), count(&m, 2));
        assert_eq!(matvec, (3, MATVEC_BLOCKS));
        assert_eq!(reduction, (1, REDUCTION_BLOCKS));
        for (part, mv, red) in [
            (RoutePart::KernelHeads, (1, 6), (1, 4)),
            (RoutePart::SinkOrUniform, (2, 6), (1, 4)),
            (RoutePart::RzSum, (2, 6), (1, 4)),
            (RoutePart::PapSum, (3, 6), (0, 4)),
            (RoutePart::MatVecBlock(4), (3, 5), (1, 4)),
            (RoutePart::ReductionBlock(2), (3, 6), (1, 3)),
        ] {
            let a = m.without(part, &Device::Cpu).unwrap();
            for step in 0..2 {
                assert_eq!(count(&a, 1 + 2 * step), mv, "{part:?}");
                assert_eq!(count(&a, 2 + 2 * step), red, "{part:?}");
            }
            assert_eq!(count(&a, 5), count(&m, 5), "{part:?}: readout untouched");
        }
    }

    #[test]
    fn blocks_out_of_range_are_errors_naming_them() {
        let e = route_b()
            .without(RoutePart::ReductionBlock(5), &Device::Cpu)
            .unwrap_err();
        assert!(e.to_string().contains("R5"), "{e}");
    }
}
