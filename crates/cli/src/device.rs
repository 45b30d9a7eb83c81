//! The device every command runs its models and SAEs on: the global `--device cpu|cuda|cuda:N`
//! flag, chosen once in `main` (the CPU when not given). A CUDA device needs a build with
//! `--features cuda`; without it, asking for one is an error that says so.

use std::error::Error;
use std::sync::OnceLock;

use candle_core::Device;
use metarep_core::device::DeviceSpec;
use metarep_model::LoadOptions;

static DEVICE: OnceLock<Device> = OnceLock::new();

/// Opens the device `spec` names and makes it the one every command uses.
pub fn choose(spec: &DeviceSpec) -> Result<(), Box<dyn Error>> {
    let device = spec.to_device()?;
    DEVICE
        .set(device)
        .map_err(|_| "the device was already chosen".into())
}

/// The chosen device.
pub fn device() -> &'static Device {
    DEVICE.get_or_init(|| Device::Cpu)
}

/// Model-loading options that place the weights on the chosen device.
pub fn load_options() -> LoadOptions {
    LoadOptions {
        device: device().clone(),
        ..LoadOptions::default()
    }
}
