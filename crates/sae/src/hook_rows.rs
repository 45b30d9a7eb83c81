//! A model's activations at one hook over token contexts, as SAE input rows.

use candle_core::{DType, Device, Tensor, D};
use metarep_model::hooks::HookPoint;
use metarep_model::{HookedTransformer, Input};

use crate::error::{Error, Result};

/// The activations at `point` for `input` (`[sequences, len, …, d_in]`), positions `skip..` of
/// each sequence, as rows `[…, d_in]` in f32 on the CPU (the model runs only as far as the
/// hook, [`HookedTransformer::run_to_reach`]). Errors when the hook's width is not `d_in`.
pub fn hook_rows(
    model: &HookedTransformer,
    point: HookPoint,
    input: &Input,
    skip: usize,
    d_in: usize,
) -> Result<Tensor> {
    let (_, cache) = model.run_with_cache_to(input, point, model.run_to_reach(&[point]))?;
    let act = cache.get(point)?;
    let (n, d) = (act.dim(1)?, act.dim(D::Minus1)?);
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
