//! The integration tests of `metarep-sae`, one module per subject, built as one test
//! binary (one link instead of one per file).

mod batchtopk;
mod dashboard;
mod loss;
mod model;
mod source;
mod splice;
mod train;
mod validation;
