//! Small vector primitives (dot, axpy) shared by the kernels that are not matmuls.
//!
//! The bodies are plain Rust written so LLVM vectorizes them; on x86-64 the same body is
//! compiled a second time with AVX2+FMA enabled and picked at run time, which is what makes
//! attention and the quantized dots several times faster without `-C target-cpu=native`
//! (the release binary must run on any x86-64).

/// Width of the independent accumulators: 16 lanes keep two AVX registers busy and break
/// the add dependency chain that otherwise serializes a float reduction.
const LANES: usize = 16;

/// The body of [`dot`], for kernels that inline it into their own feature-enabled loops.
#[inline(always)]
pub(crate) fn dot_body<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] = if FMA {
                x[l].mul_add(y[l], acc[l])
            } else {
                x[l] * y[l] + acc[l]
            };
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    // Halve the lanes pairwise (vector adds) rather than summing them in sequence, whose
    // chain of 16 dependent scalar adds cost more than the products for one 64-wide head.
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] += acc[l + width];
        }
    }
    acc[0] + tail
}

/// `y[i] += a·x[i]` over the shorter of the two slices, for kernels that inline it into
/// their own feature-enabled loops.
#[inline(always)]
pub(crate) fn axpy_body<const FMA: bool>(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = if FMA {
            xi.mul_add(a, *yi)
        } else {
            xi * a + *yi
        };
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        super::dot_body::<true>(a, b)
    }
}

/// True when the AVX2+FMA variants may run: the kernel path ([`crate::cpu_path`]) is AVX2
/// or wider.
#[inline]
pub(crate) fn has_avx2() -> bool {
    crate::cpu_path() >= crate::CpuPath::Avx2
}

/// `Σ a[i]·b[i]` over the shorter of the two slices.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the kernel path is AVX2 or wider, which the CPU supports (see `cpu`).
        return unsafe { x86::dot(a, b) };
    }
    dot_body::<false>(a, b)
}

/// A raw pointer that rayon tasks may share. Used only where tasks write provably disjoint
/// parts of one output buffer that cannot be split into slices up front (strided head
/// columns); each use states why the regions are disjoint.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);

impl SyncPtr {
    /// The pointer. A method rather than field access so closures capture the whole
    /// (`Sync`) wrapper, not the bare pointer field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the pointer is only dereferenced by tasks writing disjoint regions (see each use).
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_axpy_match_naive_loops() {
        for n in [0usize, 1, 15, 16, 17, 64, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - naive).abs() < 1e-4, "n={n}");
            let mut y = b.clone();
            axpy_body::<false>(&mut y, 0.5, &a);
            for i in 0..n {
                assert!((y[i] - (b[i] + 0.5 * a[i])).abs() < 1e-6);
            }
        }
    }
}
