//! The engine's one matrix product, C ← α·A·B + β·C in f32 on the calling thread.
//!
//! It runs on the `gemm` crate rather than `matrixmultiply` (what ndarray's
//! `general_mat_mul` uses) because `gemm` was faster on the shapes the models produce,
//! measured on this project's machine by `bench/gemm.sh` (docs/results/gemm.md): the sum
//! of a batch-32 step's products fell from 33 to 29 ms for the CNN and from 126 to 93 ms
//! for ResNet-20, with OpenBLAS no faster than `gemm` and a system library besides.
//! Always single-threaded (`Parallelism::None`): a rank is one thread, and the summation
//! order, hence every result, is the same on every run.

use ndarray::{ArrayBase, Data, DataMut, Ix2};

/// C ← α·A·B + β·C for A (m×k), B (k×n), C (m×n) of any strides (transposed views
/// included). With β = 0, C is not read (it may hold anything, NaN included).
///
/// # Panics
/// When the shapes do not chain: a programming error of the caller, like ndarray's
/// `general_mat_mul`.
pub fn mat_mul<S1, S2, S3>(
    alpha: f32,
    a: &ArrayBase<S1, Ix2>,
    b: &ArrayBase<S2, Ix2>,
    beta: f32,
    c: &mut ArrayBase<S3, Ix2>,
) where
    S1: Data<Elem = f32>,
    S2: Data<Elem = f32>,
    S3: DataMut<Elem = f32>,
{
    let ((m, k), (k2, n)) = (a.dim(), b.dim());
    assert!(
        k == k2 && c.dim() == (m, n),
        "mat_mul: ({m}×{k})·({k2}×{n}) into {:?}",
        c.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if beta == 0.0 {
            c.fill(0.0);
        } else {
            c.mapv_inplace(|v| beta * v);
        }
        return;
    }
    let (c_rs, c_cs) = (c.strides()[0], c.strides()[1]);
    let c_ptr = c.as_mut_ptr();
    // SAFETY: the three pointers and strides describe the arrays' own elements (shapes
    // checked above), C is borrowed mutably so it cannot overlap A or B, and gemm reads
    // and writes only the m×n, m×k and k×n elements they address.
    unsafe {
        // gemm's convention: dst ← alpha·dst + beta·lhs·rhs, strides (column, row).
        gemm::gemm(
            m,
            n,
            k,
            c_ptr,
            c_cs,
            c_rs,
            beta != 0.0,
            a.as_ptr(),
            a.strides()[1],
            a.strides()[0],
            b.as_ptr(),
            b.strides()[1],
            b.strides()[0],
            beta,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array2};

    fn naive(a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
        Array2::from_shape_fn((m, n), |(i, j)| {
            (0..k)
                .map(|p| a[[i, p]] as f64 * b[[p, j]] as f64)
                .sum::<f64>() as f32
        })
    }

    fn filled(m: usize, n: usize, seed: usize) -> Array2<f32> {
        Array2::from_shape_fn((m, n), |(i, j)| {
            (((i * 31 + j * 17 + seed * 7) % 23) as f32 - 11.0) / 8.0
        })
    }

    #[test]
    fn matches_the_naive_product_for_every_layout() {
        for (m, k, n) in [(1, 1, 1), (3, 5, 7), (17, 33, 9), (64, 800, 40)] {
            let (a, b) = (filled(m, k, 1), filled(k, n, 2));
            let want = naive(&a, &b);
            let tol = 1e-5 * k as f32;
            // Plain, transposed operands (stored the other way round), strided C.
            let (at, bt) = (a.t().to_owned(), b.t().to_owned());
            let mut c = Array2::from_elem((m, n), f32::NAN);
            mat_mul(1.0, &a, &b, 0.0, &mut c);
            assert!(c.iter().zip(&want).all(|(x, y)| (x - y).abs() <= tol));
            let mut c2 = Array2::from_elem((n, m), 0.5f32);
            let mut ct = c2.view_mut().reversed_axes();
            mat_mul(2.0, &at.t(), &bt.t(), 3.0, &mut ct);
            assert!(ct
                .iter()
                .zip(&want)
                .all(|(x, y)| (x - (2.0 * y + 1.5)).abs() <= 2.0 * tol));
            let mut big = Array2::from_elem((2 * m, 2 * n), 1.0f32);
            let mut every_other = big.slice_mut(s![..;2, ..;2]);
            mat_mul(1.0, &a, &b, 1.0, &mut every_other);
            assert!(every_other
                .iter()
                .zip(&want)
                .all(|(x, y)| (x - (y + 1.0)).abs() <= tol));
            assert_eq!(big[[1, 1]], 1.0, "untouched between the strided elements");
        }
    }

    #[test]
    fn an_empty_inner_dimension_scales_c() {
        let (a, b) = (Array2::<f32>::zeros((2, 0)), Array2::<f32>::zeros((0, 3)));
        let mut c = Array2::from_elem((2, 3), 2.0f32);
        mat_mul(1.0, &a, &b, 0.5, &mut c);
        assert!(c.iter().all(|&v| v == 1.0));
    }
}
