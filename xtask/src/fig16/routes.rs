//! fig16 on the softmax constructions: Route A (shared kernel heads, plain CG) and Route B, each
//! part removed from every CG step, measured against the predictions of `docs/cg_ablations.md`
//! ("The softmax routes") on the operator the intact model realises.

use candle_core::DType;
use metarep_core::rng::{derive_seed, seeded};
use metarep_eval::table::Table;
use metarep_lat_cg::invariants::Invariant;
use metarep_softmax_routes::ablation::RoutePart;
use metarep_softmax_routes::construct::{HeadSharing, SoftmaxCg, SETUP_LAYERS};
use metarep_softmax_routes::kernel::{sample_exp_task, ExpTaskSpec, Prompt};
use metarep_softmax_routes::route_a::RouteAModel;
use metarep_softmax_routes::route_b::{build, centred_problem, CentredSpec};
use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use super::{report, Attention, Prediction, Progress, Reference};
use crate::checks;
use crate::device::device;
use crate::error::BoxError;
use crate::output::ResultDir;

/// Settings of the route ablations (`[routes]` in `configs/fig16.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutesConfig {
    /// One task per seed.
    seeds: Vec<u64>,
    /// CG steps `t`.
    steps: usize,
    /// Route A's tasks.
    route_a: ExpTaskSpec,
    /// Route B's problems.
    route_b: CentredSpec,
    /// Route B's logit scale `ε_s`.
    eps: f64,
}

impl RoutesConfig {
    /// Checks the settings.
    pub fn check(&self) -> Result<(), BoxError> {
        checks::at_least_one("routes.seeds", self.seeds.len())?;
        checks::at_least_one("routes.steps", self.steps)?;
        checks::positive("routes.eps", self.eps)
    }
}

/// The predictions of `docs/cg_ablations.md` for the routes (`route_b` picks the rows that
/// differ).
fn predictions(route_b: bool) -> Vec<(RoutePart, Prediction)> {
    use Invariant::{Conjugacy as C, Orthogonality as O, Recursion as R};
    use Progress::{Any, Diverges, Slower, StallsFrom};
    use RoutePart::{KernelHeads, MatVecBlock as M, PapSum, ReductionBlock as Rd, RzSum};
    let p = |part: RoutePart, first: Option<&'static [Invariant]>, step, holds, progress| {
        let pred = Prediction::new(part.name(route_b), first, Some(step), holds, progress);
        (part, pred)
    };
    let kernel = if route_b { StallsFrom(1) } else { Diverges };
    vec![
        p(KernelHeads, Some(&[R, O]), 1, &[], kernel),
        p(RoutePart::SinkOrUniform, Some(&[R, O]), 1, &[], Any),
        p(RzSum, Some(&[O]), 1, &[R], StallsFrom(0)),
        p(PapSum, Some(&[O]), 1, &[], Diverges),
        p(M(1), Some(&[R, O]), 1, &[], StallsFrom(1)),
        p(M(2), Some(&[O, C]), 2, &[R], Slower),
        p(M(3), Some(&[R, O]), 1, &[], Any),
        p(M(4), Some(&[O]), 1, &[R, C], StallsFrom(0)),
        p(M(5), Some(&[O]), 1, &[], Diverges),
        p(M(6), Some(&[R, O]), 1, &[C], StallsFrom(0)),
        p(Rd(1), Some(&[O]), 1, &[R], StallsFrom(0)),
        p(Rd(2), Some(&[O]), 1, &[R], StallsFrom(0)),
        p(Rd(3), None, 2, &[], Any),
        p(Rd(4), Some(&[O, C]), 2, &[R], StallsFrom(1)),
    ]
}

/// Runs the ablations of both routes; returns whether every prediction was observed.
pub fn run(cfg: &RoutesConfig, table: &mut Table, out: &mut ResultDir) -> Result<bool, BoxError> {
    let dev = device();
    out.metrics.set_number("route_b_eps_s", cfg.eps);
    let mut all = true;
    for route_b in [false, true] {
        let mut models = Vec::new();
        let mut prompts = Vec::new();
        for &seed in &cfg.seeds {
            let (model, prompt) = if route_b {
                let prob = centred_problem(
                    &mut seeded(derive_seed(seed, "fig16/route-b")),
                    &cfg.route_b,
                )?;
                (build(&prob, cfg.eps, cfg.steps, &dev)?, Prompt::from(&prob))
            } else {
                let task = sample_exp_task(
                    &mut seeded(derive_seed(seed, "fig16/route-a")),
                    &cfg.route_a,
                )?;
                let spec = RouteAModel {
                    steps: cfg.steps,
                    sharing: HeadSharing::Shared,
                    normalised: true,
                    width: None,
                    preconditioner: Default::default(),
                };
                (spec.build(&task, &dev)?, task.prompt)
            };
            models.push(model);
            prompts.push(prompt);
        }
        // Each task has its own weights (Route A's kernel, Route B's λ), so each runs alone.
        let refs = models
            .iter()
            .zip(&prompts)
            .map(|(m, p)| reference(m, p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ablations = Vec::new();
        for (part, pred) in predictions(route_b) {
            let states = models
                .iter()
                .zip(&prompts)
                .map(|(m, p)| {
                    let mut s = m
                        .without(part, &dev)?
                        .solver_states(std::slice::from_ref(p))?;
                    Ok(s.remove(0))
                })
                .collect::<Result<Vec<_>, BoxError>>()?;
            ablations.push((pred, states));
        }
        let name = if route_b { "Route B" } else { "Route A" };
        all &= report(name, &refs, ablations, table, out)?;
        attention_maps(name, &models[0], &prompts[0], route_b, out)?;
    }
    Ok(all)
}

/// The patterns of each head class (first step's mat-vec and reduction layers, the readout) of
/// the first task, next to their masks.
fn attention_maps(
    name: &str,
    model: &SoftmaxCg,
    prompt: &Prompt,
    route_b: bool,
    out: &ResultDir,
) -> Result<(), BoxError> {
    let streams = model.run(std::slice::from_ref(prompt), DType::F64)?;
    let (matvec, reduction) = (SETUP_LAYERS, SETUP_LAYERS + 1);
    let readout = model.model.layers.len() - 1;
    let heads: Vec<(&str, usize, usize)> = if route_b {
        vec![
            ("small-logit kernel", matvec, 0),
            ("uniform", matvec, 1),
            ("Σrz", matvec, 2),
            ("Σp·Ap", reduction, 0),
            ("readout", readout, 0),
        ]
    } else {
        vec![
            ("kernel with sink", matvec, 0),
            ("Σrz", matvec, 1),
            ("Σp·Ap", reduction, 0),
            ("readout", readout, 0),
        ]
    };
    let maps = Attention {
        model: name,
        lat: &model.model,
        streams: &streams,
        layout: model.spec.layout,
    };
    maps.write(&heads, out)
}

/// The intact model's realised system `K̃ + λI` (f64), its states and plain CG on it.
fn reference(model: &SoftmaxCg, prompt: &Prompt) -> Result<Reference, BoxError> {
    let k = model.realised_operator(prompt, DType::F64)?;
    let n = k.nrows();
    let a = k + DMatrix::identity(n, n) * model.spec.lambda;
    let intact = model.solver_states(std::slice::from_ref(prompt))?.remove(0);
    Reference::new(a, prompt.y.clone(), DVector::from_element(n, 1.0), intact)
}
