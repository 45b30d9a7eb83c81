//! Device selection: `cpu` or `cuda:N`, parsed from strings and opened as candle devices.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Where tensors live: the CPU or one CUDA device by ordinal.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The host CPU (the default).
    #[default]
    Cpu,
    /// The CUDA device with this ordinal; needs the crate feature `cuda`.
    Cuda(usize),
}

impl DeviceSpec {
    /// Opens the device; asking for CUDA without the `cuda` feature is an error.
    pub fn to_device(&self) -> Result<candle_core::Device> {
        match *self {
            DeviceSpec::Cpu => Ok(candle_core::Device::Cpu),
            DeviceSpec::Cuda(ordinal) => open_cuda(ordinal),
        }
    }

    /// True when this is a CUDA device.
    pub fn is_cuda(&self) -> bool {
        matches!(self, DeviceSpec::Cuda(_))
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<candle_core::Device> {
    candle_core::Device::new_cuda(ordinal)
        .map_err(|e| Error::Device(format!("cannot open cuda:{ordinal}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> Result<candle_core::Device> {
    Err(Error::Device(format!(
        "cuda:{ordinal} requested but metarep-core was built without CUDA support; \
         rebuild with --features cuda"
    )))
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        if t == "cpu" {
            return Ok(DeviceSpec::Cpu);
        }
        if t == "cuda" {
            return Ok(DeviceSpec::Cuda(0));
        }
        if let Some(n) = t.strip_prefix("cuda:") {
            return n.parse::<usize>().map(DeviceSpec::Cuda).map_err(|_| {
                Error::Device(format!(
                    "bad device `{s}`: CUDA ordinal `{n}` is not a non-negative integer \
                     (expected `cpu`, `cuda` or `cuda:N`)"
                ))
            });
        }
        Err(Error::Device(format!(
            "unknown device `{s}` (expected `cpu`, `cuda` or `cuda:N`)"
        )))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trip() {
        for spec in [DeviceSpec::Cpu, DeviceSpec::Cuda(0), DeviceSpec::Cuda(3)] {
            assert_eq!(spec.to_string().parse::<DeviceSpec>().unwrap(), spec);
        }
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(" CPU ".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::default(), DeviceSpec::Cpu);
    }

    #[test]
    fn bad_strings_are_errors() {
        for bad in ["gpu", "cuda:x", "cuda:", "cuda:-1", "", "cpu:0"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(matches!(err, Error::Device(_)), "{bad}: {err}");
        }
        assert!("gpu"
            .parse::<DeviceSpec>()
            .unwrap_err()
            .to_string()
            .contains("gpu"));
    }

    #[test]
    fn cpu_opens_and_serde_is_a_string() {
        assert!(DeviceSpec::Cpu.to_device().unwrap().is_cpu());
        let json = serde_json::to_string(&DeviceSpec::Cuda(2)).unwrap();
        assert_eq!(json, "\"cuda:2\"");
        let back: DeviceSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, DeviceSpec::Cuda(2));
        assert!(serde_json::from_str::<DeviceSpec>("\"gpu\"").is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_says_how_to_fix() {
        let err = DeviceSpec::Cuda(0).to_device().unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
