//! Floating-point precision policy: f32 at run time, f64 for references and tests.

use std::fmt;
use std::str::FromStr;

use candle_core::DType;

use crate::error::{Error, Result};

/// Which float type computations run in; serialized as `"f32"`, `"f64"`, `"f16"` or `"bf16"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DTypePolicy {
    /// The dtype tensors are computed in.
    pub compute: DType,
}

impl DTypePolicy {
    /// The run-time default: f32.
    pub fn f32() -> Self {
        DTypePolicy {
            compute: DType::F32,
        }
    }

    /// The reference policy used by constructions, solvers and tests: f64.
    pub fn f64() -> Self {
        DTypePolicy {
            compute: DType::F64,
        }
    }

    /// Wraps a float dtype; non-float dtypes are an error.
    pub fn new(compute: DType) -> Result<Self> {
        match compute {
            DType::F16 | DType::BF16 | DType::F32 | DType::F64 => Ok(DTypePolicy { compute }),
            other => Err(Error::Invalid(format!(
                "dtype policy needs a float dtype (f16, bf16, f32, f64), got {other:?}"
            ))),
        }
    }

    /// The policy's name: `"f32"`, `"f64"`, `"f16"` or `"bf16"`.
    pub fn name(&self) -> &'static str {
        match self.compute {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F64 => "f64",
            _ => "f32",
        }
    }
}

impl Default for DTypePolicy {
    fn default() -> Self {
        Self::f32()
    }
}

impl FromStr for DTypePolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let compute = match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => DType::F32,
            "f64" | "float64" => DType::F64,
            "f16" | "float16" => DType::F16,
            "bf16" | "bfloat16" => DType::BF16,
            _ => {
                return Err(Error::Invalid(format!(
                    "unknown dtype `{s}` (expected f32, f64, f16 or bf16)"
                )))
            }
        };
        Ok(DTypePolicy { compute })
    }
}

impl fmt::Display for DTypePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<String> for DTypePolicy {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DTypePolicy> for String {
    fn from(p: DTypePolicy) -> String {
        p.name().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_parse() {
        assert_eq!(DTypePolicy::default(), DTypePolicy::f32());
        assert_eq!(DTypePolicy::f64().compute, DType::F64);
        for name in ["f32", "f64", "f16", "bf16"] {
            let p: DTypePolicy = name.parse().unwrap();
            assert_eq!(p.to_string(), name);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<DTypePolicy>(&json).unwrap(), p);
        }
        assert!("f8".parse::<DTypePolicy>().is_err());
        assert!(DTypePolicy::new(DType::U8).is_err());
    }
}
