//! A model's activations at one hook over token contexts, as SAE input rows.

use candle_core::{DType, Device, Tensor};
use metarep_model::hooks::{HookPoint, HookSet};
use metarep_model::{HookedTransformer, Input, RunTo};

use crate::error::{Error, Result};

/// The activations at `point` for `contexts`, positions `skip..` of each, as rows
/// `[contexts · (len − skip), d_in]` in f32 on the CPU (the model runs only up to the hook's
/// block). Errors when the hook's width is not `d_in`.
pub fn hook_rows(
    model: &HookedTransformer,
    point: HookPoint,
    contexts: &[Vec<u32>],
    skip: usize,
    d_in: usize,
) -> Result<Tensor> {
    let input = Input::from_ids(contexts, model.device())?;
    let mut seen = None;
    let mut hooks = HookSet::new().add(point, |_, act| {
        seen = Some(act.clone());
        Ok(None)
    });
    let to = match point.layer() {
        Some(l) => RunTo::Layer(l + 1),
        None => RunTo::Logits,
    };
    model.run(&input, &mut hooks, to)?;
    drop(hooks);
    let act =
        seen.ok_or_else(|| Error::Invalid(format!("hook {} was never reached", point.name())))?;
    let (_, n, d) = act.dims3()?;
    if d != d_in {
        return Err(Error::shape(
            format!("activation at {}", point.name()),
            format!("last dimension {d_in} (the SAE's d_in)"),
            format!("{:?}", act.dims()),
        ));
    }
    Ok(act
        .narrow(1, skip, n - skip)?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .reshape(((), d))?)
}

/// The common length of `contexts`; an error naming `what` unless there is at least one and
/// all have one length greater than `skip`.
pub fn context_length(contexts: &[Vec<u32>], skip: usize, what: &str) -> Result<usize> {
    let len = contexts.first().map_or(0, Vec::len);
    if len <= skip || contexts.iter().any(|c| c.len() != len) {
        return Err(Error::Invalid(format!(
            "{what} contexts: need ≥ 1 context, all of one length > skip_positions = {skip} \
             (got {} contexts, lengths {:?}…)",
            contexts.len(),
            contexts.iter().take(4).map(Vec::len).collect::<Vec<_>>()
        )));
    }
    Ok(len)
}
