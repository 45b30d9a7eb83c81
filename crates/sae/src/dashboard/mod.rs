//! Feature dashboards: for chosen latents of an SAE, the contexts that activate them most
//! (tokens shaded by activation), the histogram of their non-zero activations, and the tokens
//! each latent's decoder direction promotes and suppresses through the unembedding — as one
//! self-contained HTML page per SAE.
//!
//! [`DashboardCollector`] streams contexts (token ids with the chosen latents' activations) and
//! keeps, per latent, its top contexts and every non-zero activation; [`choose_latents`] picks
//! the latents (top by activation mass plus random ones); [`crate::logit_lens`] ranks the
//! vocabulary by a direction's effect on the logits; [`render_page`] writes the HTML; [`build_dashboard`]
//! does it all for an SAE at a hook of a model over token contexts.
//!
//! ```
//! use metarep_sae::dashboard::{DashboardCollector, Histogram};
//!
//! // Two latents over one 4-token context: activations `[positions, latents]`, row-major.
//! let mut c = DashboardCollector::new(vec![7, 9], 5, 2, 1)?;
//! c.observe(0, &[11, 12, 13, 14], &[0.0, 1.0, 2.0, 0.0, 0.5, 0.0, 0.0, 3.0])?;
//! let records = c.finish();
//! assert_eq!(records[0].top[0].position, 1); // latent 7 peaks at position 1 (2.0)
//! assert_eq!(records[1].top[0].max, 3.0);
//! let h = Histogram::of(&records[0].values, 4);
//! assert_eq!(h.counts.iter().sum::<u64>(), 2);
//! # Ok::<(), metarep_sae::Error>(())
//! ```

mod build;
mod collect;
mod html;

pub use build::{build_dashboard, DashboardSettings};
pub use collect::{choose_latents, ContextExample, DashboardCollector, Histogram, LatentRecord};
pub use html::{render_page, DashboardPage, ExampleView, LatentCard};
