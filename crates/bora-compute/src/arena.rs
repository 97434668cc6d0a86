//! Buffers sized once per (batch, sequence) shape and reused every step.
//!
//! A training step touches the same activations in the same sizes every time; allocating
//! them afresh made candle spend a third of a LoRA step in page faults. The model computes
//! its layout once ([`ArenaLayout`]), gets one allocation ([`Arena`]), and addresses buffers
//! by [`Buf`] handles. Kernels that need temporary room (quantized matmul tiles, the
//! cross-entropy chunk) take a [`Scratch`] that grows to its high-water mark and then stays.

/// A region of an [`Arena`]: handed out by [`ArenaLayout::alloc`], valid for any arena built
/// from that layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    offset: usize,
    len: usize,
}

impl Buf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Plans the regions of an arena before anything is allocated.
#[derive(Debug, Clone, Default)]
pub struct ArenaLayout {
    len: usize,
}

impl ArenaLayout {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reserves `len` floats, rounded up to 16 so each region starts on a 64-byte boundary
    /// relative to the arena start (whole cache lines, no false sharing between regions
    /// written by different threads).
    pub fn alloc(&mut self, len: usize) -> Buf {
        let buf = Buf {
            offset: self.len,
            len,
        };
        self.len += len.next_multiple_of(16);
        buf
    }

    /// Total floats the layout needs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One allocation holding every region of a layout.
#[derive(Debug, Default)]
pub struct Arena {
    data: Vec<f32>,
}

impl Arena {
    /// Allocates (zeroed) room for `layout`.
    pub fn new(layout: &ArenaLayout) -> Self {
        Self {
            data: vec![0.0; layout.len],
        }
    }

    /// Re-plans for a new shape, reallocating only if the new layout is larger than any
    /// before it.
    pub fn reset(&mut self, layout: &ArenaLayout) {
        self.data.resize(layout.len, 0.0);
    }

    pub fn get(&self, b: Buf) -> &[f32] {
        &self.data[b.offset..b.offset + b.len]
    }

    pub fn get_mut(&mut self, b: Buf) -> &mut [f32] {
        &mut self.data[b.offset..b.offset + b.len]
    }

    /// Several regions at once, mutably (a kernel reads some and writes others).
    ///
    /// # Panics
    /// If two handles overlap (the same handle twice) or one lies outside this arena.
    pub fn get_disjoint_mut<const N: usize>(&mut self, bufs: [Buf; N]) -> [&mut [f32]; N] {
        for b in &bufs {
            assert!(
                b.offset + b.len <= self.data.len(),
                "arena: {b:?} outside an arena of {}",
                self.data.len()
            );
        }
        let mut order: [usize; N] = std::array::from_fn(|i| i);
        order.sort_by_key(|&i| bufs[i].offset);
        for w in order.windows(2) {
            let (a, b) = (bufs[w[0]], bufs[w[1]]);
            assert!(
                a.offset + a.len <= b.offset || a.len == 0 || b.len == 0,
                "arena: {a:?} and {b:?} overlap"
            );
        }
        let base = self.data.as_mut_ptr();
        // SAFETY: the regions are in bounds and pairwise disjoint (checked above), and all
        // borrow from `self.data`, which `&mut self` keeps exclusively borrowed.
        bufs.map(|b| unsafe { std::slice::from_raw_parts_mut(base.add(b.offset), b.len) })
    }
}

/// Temporary room for kernels, kept between calls.
///
/// Two independent parts, so a kernel can hold its own buffer while it runs a weight
/// product that needs the tile buffer: `data` for the calling kernel, `mat` for
/// [`Weight`](crate::Weight) products.
#[derive(Debug, Default)]
pub struct Scratch {
    data: Vec<f32>,
    pub(crate) mat: MatScratch,
}

/// The room a weight product needs: a dequantized tile, or a 16-bit copy of an activation
/// row with its block scales and sums.
#[derive(Debug, Default)]
pub(crate) struct MatScratch {
    floats: Vec<f32>,
    ints: Vec<i16>,
    /// Products for inference, which may take up to
    /// [`INFERENCE_DOT_ROWS`](crate::INFERENCE_DOT_ROWS) rows through the dot kernels;
    /// otherwise [`MATVEC_MAX_ROWS`](crate::MATVEC_MAX_ROWS), as training needs.
    pub(crate) inference: bool,
}

fn grow<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

impl Scratch {
    /// Room for training's products: past [`MATVEC_MAX_ROWS`](crate::MATVEC_MAX_ROWS)
    /// activation rows, quantized weights are multiplied as exact f32 tiles.
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for inference's products, which take the faster way for their row count (see
    /// [`INFERENCE_DOT_ROWS`](crate::INFERENCE_DOT_ROWS)) at 16-bit activation precision.
    pub fn for_inference() -> Self {
        let mut s = Self::default();
        s.mat.inference = true;
        s
    }

    /// `len` floats of unspecified content; grows (once) if needed.
    pub fn take(&mut self, len: usize) -> &mut [f32] {
        grow(&mut self.data, len)
    }

    /// The caller's buffer and the weight-product room at once.
    pub(crate) fn split(&mut self, len: usize) -> (&mut [f32], &mut MatScratch) {
        (grow(&mut self.data, len), &mut self.mat)
    }
}

impl MatScratch {
    pub(crate) fn floats(&mut self, len: usize) -> &mut [f32] {
        grow(&mut self.floats, len)
    }

    pub(crate) fn with_i16(&mut self, floats: usize, ints: usize) -> (&mut [f32], &mut [i16]) {
        (grow(&mut self.floats, floats), grow(&mut self.ints, ints))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_disjoint_and_reused() {
        let mut layout = ArenaLayout::new();
        let a = layout.alloc(10);
        let b = layout.alloc(3);
        let mut arena = Arena::new(&layout);
        let [x, y] = arena.get_disjoint_mut([a, b]);
        x.fill(1.0);
        y.fill(2.0);
        assert!(arena.get(a).iter().all(|&v| v == 1.0));
        assert!(arena.get(b).iter().all(|&v| v == 2.0));
        let ptr = arena.get(a).as_ptr();
        arena.reset(&layout);
        assert_eq!(ptr, arena.get(a).as_ptr(), "same shape must not reallocate");
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn the_same_region_twice_panics() {
        let mut layout = ArenaLayout::new();
        let a = layout.alloc(4);
        let mut arena = Arena::new(&layout);
        let _ = arena.get_disjoint_mut([a, a]);
    }
}
