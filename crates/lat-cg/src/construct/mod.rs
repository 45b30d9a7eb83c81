//! Weight assignments ("constructions") for the generic LAT.
//!
//! A construction only chooses weights and masks; the forward pass is [`crate::lat::Lat`]'s.

pub mod ablation;
pub mod cg;
pub mod scaffold;
pub mod weights;
