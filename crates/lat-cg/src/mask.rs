//! Token roles and the attention masks of the compute and readout phases (see `docs/masking.md`).
//!
//! Token order is fixed: `n` support tokens, then one aggregator token, then `m` query tokens.
//! A mask is a `[tokens, tokens]` 0/1 matrix, row = reader, column = key.

use std::ops::Range;

use candle_core::{DType, Device, Tensor, D};
use nalgebra::{DMatrix, DVector};

use crate::error::{Error, Result};

/// The role of one token in an in-context problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A labelled example `(x_i, y_i)`.
    Support,
    /// The token that holds the solver's global scalars.
    Aggregator,
    /// A point to predict at.
    Query,
}

/// Token layout: `n_support` supports, one aggregator, `n_query` queries, in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLayout {
    /// Number of support tokens (n ≥ 1).
    pub n_support: usize,
    /// Number of query tokens (m ≥ 1).
    pub n_query: usize,
}

impl TokenLayout {
    /// A layout with `n_support ≥ 1` supports and `n_query ≥ 1` queries.
    pub fn new(n_support: usize, n_query: usize) -> Result<Self> {
        if n_support == 0 {
            return Err(Error::invalid(
                "support set",
                "at least one support token is needed",
            ));
        }
        if n_query == 0 {
            return Err(Error::invalid(
                "query set",
                "at least one query token is needed",
            ));
        }
        Ok(Self { n_support, n_query })
    }

    /// Total number of tokens `n + 1 + m`.
    pub fn tokens(&self) -> usize {
        self.n_support + 1 + self.n_query
    }

    /// Index of the aggregator token.
    pub fn aggregator(&self) -> usize {
        self.n_support
    }

    /// Index of the first query token.
    pub fn first_query(&self) -> usize {
        self.n_support + 1
    }

    /// Role of token `i`.
    pub fn role(&self, i: usize) -> Role {
        if i < self.n_support {
            Role::Support
        } else if i == self.n_support {
            Role::Aggregator
        } else {
            Role::Query
        }
    }

    /// Mask where reader `i` may read key `j` iff `allow(role_i, role_j, i == j)`.
    pub fn mask_where(&self, allow: impl Fn(Role, Role, bool) -> bool) -> Vec<f64> {
        let n = self.tokens();
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                if allow(self.role(i), self.role(j), i == j) {
                    m[i * n + j] = 1.0;
                }
            }
        }
        m
    }
}

/// Where a constructed solver reads an in-context prompt from the token matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptChannels {
    /// Input (feature) channels of supports and queries.
    pub input: Range<usize>,
    /// Label channel of the supports (the solver's initial residual).
    pub label: usize,
    /// 1 on supports.
    pub is_support: usize,
    /// 1 on the aggregator.
    pub is_aggregator: usize,
    /// 1 on queries.
    pub is_query: usize,
}

impl TokenLayout {
    /// Writes one prompt into `tokens`, the row-major `[tokens, channels]` block of one batch
    /// element: inputs and role flags of supports and queries, labels of supports, the
    /// aggregator flag. The caller checks that `x` is `[n, input]`, `y` `[n]` and `x_query`
    /// `[m, input]` for this layout.
    pub fn write_prompt(
        &self,
        ch: &PromptChannels,
        channels: usize,
        (x, y, x_query): (&DMatrix<f64>, &DVector<f64>, &DMatrix<f64>),
        tokens: &mut [f64],
    ) {
        let mut set = |tok: usize, chan: usize, v: f64| tokens[tok * channels + chan] = v;
        for i in 0..self.n_support {
            for (j, col) in ch.input.clone().enumerate() {
                set(i, col, x[(i, j)]);
            }
            set(i, ch.is_support, 1.0);
            set(i, ch.label, y[i]);
        }
        set(self.aggregator(), ch.is_aggregator, 1.0);
        for q in 0..self.n_query {
            let tok = self.first_query() + q;
            for (j, col) in ch.input.clone().enumerate() {
                set(tok, col, x_query[(q, j)]);
            }
            set(tok, ch.is_query, 1.0);
        }
    }

    /// Channel `chan` of every query token of a stream `[batch, tokens, channels]`, as an f64
    /// matrix `[batch, n_query]` (a solver's predictions).
    pub fn read_queries(&self, x: &Tensor, chan: usize) -> Result<DMatrix<f64>> {
        let f = x
            .narrow(D::Minus1, chan, 1)?
            .narrow(1, self.first_query(), self.n_query)?
            .squeeze(2)?
            .to_dtype(DType::F64)?;
        let (b, m) = f.dims2()?;
        Ok(DMatrix::from_row_slice(
            b,
            m,
            &f.flatten_all()?.to_vec1::<f64>()?,
        ))
    }
}

/// The masks a constructed solver uses, as `[tokens, tokens]` row-major 0/1 matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseMask {
    /// Compute phase, mat-vec heads: supports read supports.
    SupportToSupport,
    /// Compute phase, diagonal terms: each support reads only itself.
    SupportSelf,
    /// Compute phase, reductions: supports and the aggregator read supports.
    Reduction,
    /// Readout phase: queries read supports; nobody else reads anything.
    Readout,
    /// Compute phase, softmax mat-vec heads: supports read supports and the aggregator, whose
    /// zero key makes it an attention sink of logit 0 (`docs/route_a_theorem.md`).
    SupportToSupportAndSink,
    /// Readout phase with the sink: queries read supports and the aggregator.
    ReadoutWithSink,
}

impl PhaseMask {
    /// Whether a reader of role `reader` may read key `key` (`same` = same token).
    pub fn allows(self, reader: Role, key: Role, same: bool) -> bool {
        use Role::*;
        match self {
            PhaseMask::SupportToSupport => reader == Support && key == Support,
            PhaseMask::SupportSelf => reader == Support && key == Support && same,
            PhaseMask::Reduction => matches!(reader, Support | Aggregator) && key == Support,
            PhaseMask::Readout => reader == Query && key == Support,
            PhaseMask::SupportToSupportAndSink => {
                reader == Support && matches!(key, Support | Aggregator)
            }
            PhaseMask::ReadoutWithSink => reader == Query && matches!(key, Support | Aggregator),
        }
    }

    /// The mask as a `[tokens, tokens]` tensor (f64) on `device`.
    pub fn tensor(self, layout: &TokenLayout, device: &Device) -> Result<Tensor> {
        let n = layout.tokens();
        let data = layout.mask_where(|r, k, same| self.allows(r, k, same));
        Ok(Tensor::from_vec(data, (n, n), device)?)
    }
}

/// True iff no mask lets a support or the aggregator read a query token: the property that makes
/// support states independent of the queries.
pub fn queries_unread(masks: &[PhaseMask]) -> bool {
    masks.iter().all(|m| {
        [Role::Support, Role::Aggregator]
            .into_iter()
            .all(|reader| !m.allows(reader, Role::Query, false))
    })
}
