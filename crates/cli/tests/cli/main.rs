//! The integration tests of `metarep-cli`, one module per subject, built as one test
//! binary (one link instead of one per file).

mod ablate_cli;
mod capture_cli;
mod common;
mod context_length_cli;
mod forward;
mod generate_cli;
mod gist_tree_cli;
mod megacontext_cli;
mod patch_cli;
mod sae_cli;
mod sae_on_model_cli;
mod second_order_cli;
