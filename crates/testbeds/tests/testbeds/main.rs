//! The integration tests of `metarep-testbeds`, one module per subject, built as one test
//! binary (one link instead of one per file).

mod arith;
mod byte_lm;
mod induction;
