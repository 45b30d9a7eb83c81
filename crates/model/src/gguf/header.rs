//! A minimal walk over a GGUF header (metadata skipped, tensor infos read), used to name the
//! tensor whose type candle cannot read: candle's parser stops at the first unknown type id
//! without saying which tensor carries it.
//!
//! Layout (GGUF v2/v3, little endian): magic `GGUF`, version `u32`, tensor count `u64`, metadata
//! count `u64`; each metadata entry is a string key, a `u32` value type and the value (strings
//! are a `u64` length and bytes, arrays a `u32` item type, a `u64` count and the items); each
//! tensor info is a string name, a `u32` dimension count, `u64` dimensions, a `u32` type and a
//! `u64` data offset.

use std::io::{BufReader, Read};
use std::path::Path;

use crate::error::{Error, Result};

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// The tensor's name.
    pub name: String,
    /// The ggml type id.
    pub ggml_type: u32,
    /// Byte offset of the type id in the file.
    pub type_offset: u64,
}

/// The ggml type ids candle-core 0.11 can read and dequantize.
pub const READABLE_TYPES: &[u32] = &[0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 30];

/// The name llama.cpp gives ggml type `id`.
pub fn type_name(id: u32) -> &'static str {
    const NAMES: &[&str] = &[
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    match id {
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => NAMES.get(id as usize).copied().unwrap_or("unknown"),
    }
}

/// Counting reader over the file, with errors naming it.
struct Walk<'a> {
    inner: BufReader<std::fs::File>,
    pos: u64,
    path: &'a Path,
}

impl Walk<'_> {
    fn err(&self, what: &str) -> Error {
        Error::Invalid(format!(
            "{}: GGUF header unreadable at byte {}: {what}",
            self.path.display(),
            self.pos
        ))
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>> {
        // Lengths come from the file: read in bounded steps so a corrupt length cannot
        // allocate more than the file holds.
        let mut out = Vec::new();
        let got = (&mut self.inner)
            .take(n)
            .read_to_end(&mut out)
            .map_err(|e| self.err(&e.to_string()))?;
        if got as u64 != n {
            return Err(self.err(&format!("needs {n} bytes, the file ends after {got}")));
        }
        self.pos += n;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u64()?;
        let b = self.bytes(n)?;
        String::from_utf8(b).map_err(|_| self.err("a string is not UTF-8"))
    }

    /// Skips one metadata value of type `ty`.
    fn skip_value(&mut self, ty: u32) -> Result<()> {
        let fixed = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => return self.string().map(drop),
            9 => {
                let item = self.u32()?;
                let count = self.u64()?;
                for _ in 0..count {
                    self.skip_value(item)?;
                }
                return Ok(());
            }
            other => return Err(self.err(&format!("unknown metadata value type {other}"))),
        };
        self.bytes(fixed).map(drop)
    }
}

/// The tensor entries of the GGUF file at `path`, in header order.
pub fn tensor_entries(path: &Path) -> Result<Vec<TensorEntry>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut w = Walk {
        inner: BufReader::new(file),
        pos: 0,
        path,
    };
    if w.bytes(4)? != b"GGUF" {
        return Err(w.err("not a GGUF file (no GGUF magic)"));
    }
    let version = w.u32()?;
    if !(2..=3).contains(&version) {
        return Err(w.err(&format!("GGUF version {version} (2 and 3 are read)")));
    }
    let tensors = w.u64()?;
    let entries = w.u64()?;
    for _ in 0..entries {
        w.string()?;
        let ty = w.u32()?;
        w.skip_value(ty)?;
    }
    let mut out = Vec::new();
    for _ in 0..tensors {
        let name = w.string()?;
        let dims = w.u32()?;
        for _ in 0..dims {
            w.u64()?;
        }
        let type_offset = w.pos;
        let ggml_type = w.u32()?;
        w.u64()?;
        out.push(TensorEntry {
            name,
            ggml_type,
            type_offset,
        });
    }
    Ok(out)
}

/// An error naming the first tensor of `path` whose type candle cannot read, if there is one.
pub fn unreadable_tensor(path: &Path) -> Option<Error> {
    let entries = tensor_entries(path).ok()?;
    let bad = entries
        .iter()
        .find(|e| !READABLE_TYPES.contains(&e.ggml_type))?;
    let readable: Vec<&str> = READABLE_TYPES.iter().map(|&t| type_name(t)).collect();
    Some(Error::Invalid(format!(
        "{}: tensor `{}` has type {} (ggml type {}), which cannot be dequantized here \
         (readable: {})",
        path.display(),
        bad.name,
        type_name(bad.ggml_type),
        bad.ggml_type,
        readable.join(", ")
    )))
}
