//! metarep-core: the foundations every metarep crate shares — device selection
//! ([`DeviceSpec`]), float precision policy ([`DTypePolicy`]), seeded randomness ([`rng`]),
//! TOML configs with `key.path=value` overrides and strict unknown-key errors ([`config`]),
//! run manifests ([`RunManifest`]), metrics files ([`MetricsSink`], [`FlatMetrics`]),
//! atomic file writes ([`fsutil`]), this process's resident memory ([`memory`]), safetensors checkpoints ([`checkpoint`]), the shared
//! optimiser pieces (AdamW, warmup + cosine schedule, gradient clipping: [`optim`]), the one
//! training run loop every trainer uses (resume, checkpoints, metrics log: [`train`]) and
//! progress bars ([`progress`]), all reporting failures through one [`Error`] type.
//!
//! ```
//! use metarep_core::{config, rng, DTypePolicy, DeviceSpec, FlatMetrics, RunManifest};
//!
//! #[derive(serde::Deserialize, serde::Serialize)]
//! struct Train { lr: f64, steps: u32 }
//! #[derive(serde::Deserialize, serde::Serialize)]
//! struct Cfg { seed: u64, device: DeviceSpec, dtype: DTypePolicy, train: Train }
//!
//! let text = "seed = 7\ndevice = \"cpu\"\ndtype = \"f64\"\n[train]\nlr = 0.1\nsteps = 10\n";
//! let cfg: Cfg = config::parse_config(text, &["train.lr=0.5".to_string()])?;
//! assert_eq!(cfg.train.lr, 0.5);
//! assert!(config::parse_config::<Cfg>(text, &["train.lr_typo=1".to_string()]).is_err());
//!
//! let _device = cfg.device.to_device()?;
//! let mut gen = rng::seeded(rng::derive_seed(cfg.seed, "data"));
//! let xs = rng::normal_vec(&mut gen, 4, 0.0, 1.0)?;
//!
//! let mut manifest = RunManifest::start(&cfg, vec![cfg.seed], "metarep-core", "0.1.0")?;
//! let mut metrics = FlatMetrics::new();
//! metrics.set_number("mean", xs.iter().sum::<f64>() / 4.0);
//! metrics.set_bool("pass", true);
//! manifest.finish();
//! # Ok::<(), metarep_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod device;
pub mod dtype;
pub mod error;
pub mod fsutil;
pub mod half_bytes;
pub mod html;
pub mod manifest;
pub mod memory;
pub mod metrics;
pub mod optim;
pub mod progress;
pub mod rng;
pub mod threads;
pub mod time;
pub mod train;

pub use checkpoint::{load_checkpoint, save_checkpoint};
pub use config::{canonical_json, config_hash, load_config, parse_config};
pub use device::DeviceSpec;
pub use dtype::DTypePolicy;
pub use error::{Error, Result};
pub use fsutil::{atomic_write, ensure_dir};
pub use manifest::RunManifest;
pub use metrics::{FlatMetrics, MetricValue, MetricsSink};
