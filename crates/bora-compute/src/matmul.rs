//! f32 matrix products for linear layers, forward and both backward products.
//!
//! A linear layer `y = x · Wᵀ` (torch `[out, in]` weights) needs three products in
//! training: the forward, the input gradient `dx = dy · W` (also through frozen weights, to
//! reach earlier layers' LoRA), and the weight gradient `dW = dyᵀ · x` (only for LoRA A/B).
//! All three are one `gemm` call with strides chosen so no operand is ever transposed in
//! memory.

use gemm::Parallelism;

/// Operand description for [`gemm_f32`]: a pointer-free view (slice, row stride, column
/// stride) so the bounds can be checked before the unsafe call.
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

fn check_bounds(len: usize, rows: usize, cols: usize, rs: usize, cs: usize, what: &str) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        last < len,
        "{what}: a {rows}x{cols} view (strides {rs},{cs}) needs {} elements, slice has {len}",
        last + 1
    );
}

/// `dst[m,n] (=|+=) lhs[m,k] · rhs[k,n]` with arbitrary strides.
///
/// `parallel` must be false when called from inside a rayon task that holds a lock or
/// per-task scratch: gemm's rayon splitting could otherwise run another such task on this
/// thread.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    parallel: bool,
) {
    check_bounds(dst.len(), m, n, dst_rs, dst_cs, "gemm dst");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[i * dst_rs + j * dst_cs] = 0.0;
                }
            }
        }
        return;
    }
    check_bounds(lhs.data.len(), m, k, lhs.rs, lhs.cs, "gemm lhs");
    check_bounds(rhs.data.len(), k, n, rhs.rs, rhs.cs, "gemm rhs");
    let parallel = parallel && m * n * k >= 32 * 32 * 32;
    // SAFETY: every index the product touches lies inside the slices (checked above); dst
    // is exclusively borrowed and cannot alias lhs or rhs.
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            (dst_rs, dst_cs),
            accumulate,
            (lhs.data.as_ptr(), lhs.rs, lhs.cs),
            (rhs.data.as_ptr(), rhs.rs, rhs.cs),
            parallel,
        )
    }
}

/// `dst[m,n] (=|+=) lhs[m,k] · rhs[k,n]` on raw (pointer, row stride, column stride)
/// operands, for kernels whose parallel tasks own strided, interleaved parts of one buffer
/// (attention heads) and so cannot hold them as slices.
///
/// # Safety
/// Every element the product reads or writes must be in bounds of a live allocation; `dst`
/// must not be written or read by anyone else during the call and must not overlap the
/// operands. `k` must be non-zero.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    parallel: bool,
) {
    // SAFETY: the operands and `dst` are valid and unaliased for the extent of the product (this
    // function's contract), which is all gemm reads and writes.
    unsafe {
        let parallelism = if parallel {
            Parallelism::Rayon(0)
        } else {
            Parallelism::None
        };
        let (dst_cs, dst_rs) = (dst_cs as isize, dst_rs as isize);
        let (lhs_cs, lhs_rs) = (lhs_cs as isize, lhs_rs as isize);
        let (rhs_cs, rhs_rs) = (rhs_cs as isize, rhs_rs as isize);
        // gemm picks its kernel from the CPU's features alone (no setting), so the narrower
        // paths call its AVX2 and scalar kernels the way its own dispatch does.
        macro_rules! basic {
            ($simd:expr, $module:ident, $n:expr) => {{
                use gemm_f32::microkernel::$module::f32::{H_M, H_N, H_UKR, MR_DIV_N, NR, UKR};
                gemm_common::gemm::gemm_basic_generic::<
                    _,
                    f32,
                    $n,
                    { MR_DIV_N * $n },
                    NR,
                    MR_DIV_N,
                    H_M,
                    H_N,
                >(
                    $simd,
                    m,
                    n,
                    k,
                    dst,
                    dst_cs,
                    dst_rs,
                    accumulate,
                    lhs,
                    lhs_cs,
                    lhs_rs,
                    rhs,
                    rhs_cs,
                    rhs_rs,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    |a, b, c| a * b + c,
                    &UKR,
                    &H_UKR,
                    false,
                    parallelism,
                )
            }};
        }
        match crate::cpu_path() {
            crate::CpuPath::Avx512 => gemm::gemm(
                m,
                n,
                k,
                dst,
                dst_cs,
                dst_rs,
                accumulate,
                lhs,
                lhs_cs,
                lhs_rs,
                rhs,
                rhs_cs,
                rhs_rs,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            ),
            #[cfg(target_arch = "x86_64")]
            crate::CpuPath::Avx2 => basic!(
                gemm_common::simd::V3::try_new().expect("the AVX2 path runs on AVX2 CPUs"),
                fma,
                8
            ),
            _ => basic!(gemm_common::simd::Scalar, scalar, 1),
        }
    }
}

/// Linear forward: `y[m,n] = x[m,k] · w[n,k]ᵀ`, or `y += …` when `accumulate` (used to add a
/// LoRA branch onto the base projection without a temporary).
pub fn matmul_xwt(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert_eq!(y.len(), m * n, "matmul_xwt: y");
    assert_eq!(x.len(), m * k, "matmul_xwt: x");
    assert_eq!(w.len(), n * k, "matmul_xwt: w");
    gemm_f32(
        m,
        n,
        k,
        y,
        n,
        1,
        accumulate,
        Mat {
            data: x,
            rs: k,
            cs: 1,
        },
        Mat {
            data: w,
            rs: 1,
            cs: k,
        },
        true,
    );
}

/// Input gradient of a linear layer: `dx[m,k] = dy[m,n] · w[n,k]` (`+=` when
/// `accumulate`, which is how the gradients of q/k/v, or of gate/up, meet at their shared
/// input).
pub fn matmul_dx(
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    assert_eq!(dx.len(), m * k, "matmul_dx: dx");
    assert_eq!(dy.len(), m * n, "matmul_dx: dy");
    assert_eq!(w.len(), n * k, "matmul_dx: w");
    gemm_f32(
        m,
        k,
        n,
        dx,
        k,
        1,
        accumulate,
        Mat {
            data: dy,
            rs: n,
            cs: 1,
        },
        Mat {
            data: w,
            rs: k,
            cs: 1,
        },
        true,
    );
}

/// Weight gradient of a linear layer: `dw[n,k] = dy[m,n]ᵀ · x[m,k]` (`+=` when
/// `accumulate`, for gradient accumulation over micro-batches).
pub fn matmul_dw(
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    assert_eq!(dw.len(), n * k, "matmul_dw: dw");
    assert_eq!(dy.len(), m * n, "matmul_dw: dy");
    assert_eq!(x.len(), m * k, "matmul_dw: x");
    gemm_f32(
        n,
        k,
        m,
        dw,
        k,
        1,
        accumulate,
        Mat {
            data: dy,
            rs: 1,
            cs: n,
        },
        Mat {
            data: x,
            rs: k,
            cs: 1,
        },
        true,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, check_grad, project, rand_vec as fill};

    fn close(a: &[f32], b: &[f64], tol: f64) {
        assert_close(a, b, tol, "matmul");
    }

    #[test]
    fn three_products_match_naive_loops() {
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 7), (37, 64, 19), (70, 96, 130)] {
            let x = fill(m * k, 1);
            let w = fill(n * k, 2);
            let dy = fill(m * n, 3);
            let mut y = vec![0.5; m * n];
            matmul_xwt(&mut y, &x, &w, m, k, n, false);
            let mut want = vec![0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    want[i * n + j] = (0..k)
                        .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                        .sum();
                }
            }
            close(&y, &want, 1e-5);
            matmul_xwt(&mut y, &x, &w, m, k, n, true);
            let twice: Vec<f64> = want.iter().map(|v| 2.0 * v).collect();
            close(&y, &twice, 1e-5);

            let mut dx = vec![0f32; m * k];
            matmul_dx(&mut dx, &dy, &w, m, n, k, false);
            let mut want = vec![0f64; m * k];
            for i in 0..m {
                for t in 0..k {
                    want[i * k + t] = (0..n)
                        .map(|j| dy[i * n + j] as f64 * w[j * k + t] as f64)
                        .sum();
                }
            }
            close(&dx, &want, 1e-5);

            let mut dw = vec![1f32; n * k];
            matmul_dw(&mut dw, &dy, &x, m, n, k, true);
            let mut want = vec![0f64; n * k];
            for j in 0..n {
                for t in 0..k {
                    want[j * k + t] = 1.0
                        + (0..m)
                            .map(|i| dy[i * n + j] as f64 * x[i * k + t] as f64)
                            .sum::<f64>();
                }
            }
            close(&dw, &want, 1e-5);
        }
    }

    #[test]
    fn input_and_weight_gradients_match_finite_differences() {
        let (m, k, n) = (5, 12, 7);
        let x = fill(m * k, 4);
        let w = fill(n * k, 5);
        let r = fill(m * n, 6);
        let mut dx = vec![0f32; m * k];
        let mut dw = vec![0f32; n * k];
        matmul_dx(&mut dx, &r, &w, m, n, k, false);
        matmul_dw(&mut dw, &r, &x, m, n, k, false);
        let mut y = vec![0f32; m * n];
        check_grad(
            &x,
            &dx,
            |xp| {
                matmul_xwt(&mut y, xp, &w, m, k, n, false);
                project(&y, &r)
            },
            1e-2,
            1e-3,
            "dx",
        );
        check_grad(
            &w,
            &dw,
            |wp| {
                matmul_xwt(&mut y, &x, wp, m, k, n, false);
                project(&y, &r)
            },
            1e-2,
            1e-3,
            "dw",
        );
    }
}
