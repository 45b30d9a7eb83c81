//! The integration tests of `metarep-lat-cg`, one module per subject, built as one test
//! binary (one link instead of one per file).

mod attention_kinds;
mod common;
mod errors;
mod glm;
mod icl;
mod lemmas;
mod masking;
mod past_convergence;
mod probes;
mod stack;
