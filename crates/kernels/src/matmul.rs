//! Dense products into caller-owned buffers through the `gemm` crate, with explicit strides (a
//! transposed operand is a view, not a copy), each counted by [`crate::profile`].

use candle_core::Tensor;

use crate::cpu::Real;
use crate::profile;

/// A read-only matrix view: `rows × cols` elements of `data`, element `(i, j)` at
/// `i·row_stride + j·col_stride`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T> View<'a, T> {
    /// The row-major `rows × cols` matrix held in `data`.
    pub(crate) fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self::strided(data, (rows, cols), (cols, 1))
    }

    /// The transpose (`cols × rows`) of the row-major `rows × cols` matrix held in `data`.
    pub(crate) fn transposed(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self::strided(data, (cols, rows), (1, cols))
    }

    /// A `shape` view with `(row, column)` strides; panics if it reaches past `data` (a bug in
    /// the caller, which checks its arguments' shapes first).
    pub(crate) fn strided(
        data: &'a [T],
        (rows, cols): (usize, usize),
        (row_stride, col_stride): (usize, usize),
    ) -> Self {
        if rows > 0 && cols > 0 {
            assert!(
                (rows - 1) * row_stride + (cols - 1) * col_stride < data.len(),
                "matrix view past its slice"
            );
        }
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }
}

/// `dst ← lhs·rhs` (or `dst ← dst + lhs·rhs` when `accumulate`), `dst` row-major
/// `[lhs.rows, rhs.cols]`; threaded with rayon, counted by [`crate::profile`].
pub(crate) fn gemm_into<T: Real>(dst: &mut [T], lhs: View<T>, rhs: View<T>, accumulate: bool) {
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    profile::timed((lhs.rows, rhs.cols, lhs.cols), || {
        gemm_uncounted(dst, lhs, rhs, accumulate, parallelism)
    });
}

/// [`gemm_into`] on the calling thread only, not counted (for many small products run in
/// parallel, counted once around all of them).
pub(crate) fn gemm_serial<T: Real>(dst: &mut [T], lhs: View<T>, rhs: View<T>) {
    gemm_uncounted(dst, lhs, rhs, false, gemm::Parallelism::None);
}

fn gemm_uncounted<T: Real>(
    dst: &mut [T],
    lhs: View<T>,
    rhs: View<T>,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions differ");
    assert_eq!(dst.len(), m * n, "destination size");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(T::zero());
        }
        return;
    }
    // SAFETY: `dst` holds m·n elements, written row-major (column stride 1, row stride n);
    // `lhs` and `rhs` are views whose every element lies inside their slices (checked when
    // they were built), and all three slices outlive the call. `dst` is a `&mut` borrow, so
    // it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// candle's `a.matmul(b)` (`[m, k]` by `[k, n]`), counted by [`crate::profile`].
pub(crate) fn counted_matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (m, k) = a.dims2()?;
    let (_, n) = b.dims2()?;
    profile::timed((m, n, k), || a.matmul(b))
}
