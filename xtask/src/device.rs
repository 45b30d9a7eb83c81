//! The device an xtask target computes on: `--set device=cpu|cuda|cuda:N` on `reproduce` and
//! `bench` (the CPU when not given). Every experiment and `bench gpu` take it; the other
//! benchmarks (CPU speed against a CPU reference) refuse another device with an error naming
//! them, so no run silently ignores the setting.

use std::path::Path;
use std::sync::OnceLock;

use candle_core::Device;
use metarep_core::device::DeviceSpec;
use metarep_model::{HookedTransformer, LoadOptions};

use crate::error::BoxError;

static CHOSEN: OnceLock<(DeviceSpec, Device)> = OnceLock::new();

/// `settings` without its `device=…` entry, after opening that device as the one [`device`]
/// returns; an unknown or unavailable device is an error.
pub fn take(settings: &[String]) -> Result<Vec<String>, BoxError> {
    let mut rest = Vec::with_capacity(settings.len());
    for s in settings {
        match s.strip_prefix("device=") {
            Some(value) => {
                let spec: DeviceSpec = value
                    .parse()
                    .map_err(|e| format!("--set device={value}: {e}"))?;
                let device = spec
                    .to_device()
                    .map_err(|e| format!("--set device={value}: {e}"))?;
                if CHOSEN.set((spec, device)).is_err() {
                    return Err("--set device=… given twice".into());
                }
            }
            None => rest.push(s.clone()),
        }
    }
    Ok(rest)
}

/// The `--set device` given, if any.
pub fn chosen() -> Option<DeviceSpec> {
    CHOSEN.get().map(|(spec, _)| *spec)
}

/// The device to compute on (the CPU unless `--set device` chose another).
pub fn device() -> Device {
    CHOSEN
        .get()
        .map_or(Device::Cpu, |(_, device)| device.clone())
}

/// Model loading options on [`device`].
pub fn load_options() -> LoadOptions {
    LoadOptions {
        device: device(),
        ..LoadOptions::default()
    }
}

/// `model`, trained on the CPU and saved at `saved`, on [`device`]: itself on the CPU, else
/// loaded from the saved copy onto the chosen device.
pub fn onto_device(model: HookedTransformer, saved: &Path) -> Result<HookedTransformer, BoxError> {
    match device().is_cpu() {
        true => Ok(model),
        false => Ok(HookedTransformer::from_dir(saved, &load_options())?),
    }
}

/// Errors unless `target` may run on the chosen device: the CPU always, another device only
/// when `supported`.
pub fn check(target: &str, supported: bool) -> Result<(), BoxError> {
    match chosen() {
        Some(spec) if spec.is_cuda() && !supported => Err(format!(
            "{target} runs on the CPU only; --set device={spec} is taken by every experiment \
             and `bench gpu`"
        )
        .into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_settings_pass_through_and_bad_devices_are_errors() {
        let rest = take(&["quick=1".into(), "reps=3".into()]).unwrap();
        assert_eq!(rest, ["quick=1", "reps=3"]);
        let err = take(&["device=tpu".into()]).unwrap_err().to_string();
        assert!(err.contains("--set device=tpu"), "{err}");
        #[cfg(not(feature = "cuda"))]
        {
            let err = take(&["device=cuda:0".into()]).unwrap_err().to_string();
            assert!(err.contains("without CUDA support"), "{err}");
        }
        // Nothing was chosen: every target may run (on the CPU).
        assert!(chosen().is_none());
        assert!(check("fig3", false).is_ok());
        assert!(device().is_cpu());
    }
}
