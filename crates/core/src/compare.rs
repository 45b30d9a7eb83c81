//! Comparing tensors: the largest absolute difference and the largest magnitude, computed in
//! f64 whatever the inputs' dtype (what tests and parity checks assert on).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use metarep_core::compare::{max_abs, max_abs_diff};
//!
//! let a = Tensor::new(&[1.0f32, -2.0], &Device::Cpu)?;
//! let b = Tensor::new(&[1.5f32, -2.0], &Device::Cpu)?;
//! assert_eq!(max_abs_diff(&a, &b)?, 0.5);
//! assert_eq!(max_abs(&a)?, 2.0);
//! # Ok::<(), metarep_core::Error>(())
//! ```

use candle_core::{DType, Tensor};

use crate::error::Result;

/// `max |a − b|` over all elements (same shapes; any float dtypes).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    max_abs(&(a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?)
}

/// `max |t|` over all elements.
pub fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?)
}
