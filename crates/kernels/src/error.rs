//! The crate's error type and `Result` alias.

/// Every failure a metarep kernel can report; each names the op and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument has the wrong rank, shape or dtype.
    #[error("{op}: {what}")]
    Shape {
        /// The kernel that rejected the input.
        op: &'static str,
        /// What is wrong, with the expected and actual shapes.
        what: String,
    },
    /// An index is out of range for the weight's rows.
    #[error("{op}: index {index} at (row {row}, slot {slot}) is out of range for {rows} rows")]
    Index {
        /// The kernel that rejected the input.
        op: &'static str,
        /// The offending index.
        index: u32,
        /// Batch row of the index.
        row: usize,
        /// Slot (column) of the index within its row.
        slot: usize,
        /// Number of rows of the weight.
        rows: usize,
    },
    /// The kernel has no implementation for this device.
    #[error("{op}: no kernel for device {device} (CPU kernels only)")]
    Device {
        /// The kernel that was asked.
        op: &'static str,
        /// The device it was asked to run on.
        device: String,
    },
    /// An error from candle.
    #[error("candle error: {0}")]
    Candle(#[from] candle_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Builds an [`Error::Shape`].
    pub(crate) fn shape(op: &'static str, what: impl Into<String>) -> Self {
        Error::Shape {
            op,
            what: what.into(),
        }
    }
}
