//! The integration tests of `metarep-softmax-routes`, one module per subject, built as one test
//! binary (one link instead of one per file).

mod common;
mod route_a;
mod route_b;
mod sweeps;
mod width_rank;
