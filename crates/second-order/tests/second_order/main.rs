//! The integration tests of `metarep-second-order`, one module per subject, built as one test
//! binary (one link instead of one per file).

mod common;
mod effects;
mod lexicon;
mod null;
mod pca_omp;
mod pipeline;
