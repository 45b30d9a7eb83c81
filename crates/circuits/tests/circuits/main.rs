//! The integration tests of `metarep-circuits`, one module per subject, built as one test
//! binary (one link instead of one per file).

mod attribution;
mod diagnostics;
mod ioi;
mod repeat_study;
