//! The integration tests of `metarep-megacontext`, one module per subject, built as one test
//! binary (one link instead of one per file).

mod common;
mod focus;
mod generate;
mod gistnet;
mod lensnet;
mod stream;
mod summarizer;
mod working_context;
