//! The integration tests of `metarep-kernels`, one module per subject, built as one test
//! binary (one link instead of one per file).

mod common;
mod dense;
mod device_ops;
mod fused_forward;
mod portable;
mod relu_sae;
mod select;
mod sparse;
mod topk_sae;
