//! The integration tests of `metarep-gist-tree`, one module per subject, built as one test
//! binary (one link instead of one per file).

mod api;
mod common;
mod corruption;
mod crash;
mod model;
mod recreate;
