//! The one random generator of a run: PCG64 (XSL-RR 128/64, the generator numpy's
//! `PCG64` implements), small enough to read, with a state that fits in a checkpoint so a
//! resumed run draws the same dropout masks it would have drawn.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

const MULTIPLIER: u128 = 0x2360_ED05_1FC6_5DA4_4385_DF64_9FCC_F645;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u128,
    inc: u128,
}

/// The generator's state as hex strings: JSON numbers cannot hold 128 bits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub state: String,
    pub inc: String,
}

/// Independent streams drawn from one seed, so that adding dropout does not change the
/// data order or the initial weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    Init = 1,
    Data = 2,
    Dropout = 3,
}

impl Rng {
    /// A generator from the run seed and a stream. The seed is spread over the 128-bit
    /// state with SplitMix64 so nearby seeds give unrelated sequences.
    pub fn new(seed: u64, stream: Stream) -> Self {
        let mut sm = bora_rng::SplitMix64::new(seed);
        let hi = sm.next_u64();
        let lo = sm.next_u64();
        let mut rng = Self {
            state: 0,
            inc: ((stream as u128) << 1) | 1,
        };
        rng.step();
        rng.state = rng
            .state
            .wrapping_add((u128::from(hi) << 64) | u128::from(lo));
        rng.step();
        rng
    }

    /// A generator at an exact PCG64 state (`inc` must be odd), as numpy's
    /// `bit_generator.state` would set it.
    pub fn from_raw(state: u128, inc: u128) -> Result<Self> {
        if inc & 1 == 0 {
            return Err(TrainError::Mismatch {
                what: format!("PCG64 increment {inc:#x} must be odd"),
            });
        }
        Ok(Self { state, inc })
    }

    pub fn state(&self) -> RngState {
        RngState {
            state: format!("{:032x}", self.state),
            inc: format!("{:032x}", self.inc),
        }
    }

    pub fn from_state(saved: &RngState) -> Result<Self> {
        let parse = |field: &str, text: &str| {
            u128::from_str_radix(text, 16).map_err(|e| TrainError::Mismatch {
                what: format!("RNG state `{field}` = {text:?} is not 128-bit hex: {e}"),
            })
        };
        Self::from_raw(parse("state", &saved.state)?, parse("inc", &saved.inc)?)
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(MULTIPLIER).wrapping_add(self.inc);
    }

    /// The next 64 random bits (numpy's `random_raw`: advance, then output).
    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let folded = ((self.state >> 64) as u64) ^ (self.state as u64);
        folded.rotate_right((self.state >> 122) as u32)
    }

    /// Uniform in [0, 1) with 24 random bits, every value exactly representable.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform in [0, n) without modulo bias (Lemire's multiply-and-reject); 0 when n is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let wide = u128::from(self.next_u64()) * u128::from(n);
            if (wide as u64) >= threshold {
                return (wide >> 64) as u64;
            }
        }
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// Fills `mask` for inverted dropout as torch does it: each element is 0 with
    /// probability `p`, else `1 / (1 - p)`, so the expected activation is unchanged and
    /// evaluation needs no rescaling.
    pub fn dropout_mask(&mut self, mask: &mut [f32], p: f32) {
        let keep_scale = 1.0 / (1.0 - p);
        for m in mask {
            *m = if self.uniform() < p { 0.0 } else { keep_scale };
        }
    }
}

/// The bound of PEFT's LoRA A init, `kaiming_uniform_(a=sqrt(5))`: gain √(2/(1+a²)) times
/// √3/√fan_in, which is 1/√fan_in. That small bound keeps the initial adapter update tiny
/// while B = 0 makes it exactly zero.
pub fn kaiming_uniform_bound(fan_in: usize) -> f32 {
    let a2 = 5.0f64;
    let gain = (2.0 / (1.0 + a2)).sqrt();
    (gain * 3.0f64.sqrt() / (fan_in as f64).sqrt()) as f32
}

/// PEFT's init of one LoRA pair: A ([rank, in_features]) uniform in ±1/√in_features, B
/// ([out_features, rank]) zero, so training starts from exactly the base model.
pub fn init_lora(
    rng: &mut Rng,
    rank: usize,
    in_features: usize,
    out_features: usize,
) -> (Vec<f32>, Vec<f32>) {
    let bound = kaiming_uniform_bound(in_features);
    let a = (0..rank * in_features)
        .map(|_| (2.0 * rng.uniform() - 1.0) * bound)
        .collect();
    (a, vec![0.0; out_features * rank])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_continues_the_same_sequence() {
        let mut rng = Rng::new(42, Stream::Dropout);
        for _ in 0..10 {
            rng.next_u64();
        }
        let saved = rng.state();
        let json = serde_json::to_string(&saved).unwrap();
        let mut resumed = Rng::from_state(&serde_json::from_str(&json).unwrap()).unwrap();
        for _ in 0..100 {
            assert_eq!(resumed.next_u64(), rng.next_u64());
        }
        let bad = RngState {
            state: "zz".into(),
            inc: "1".into(),
        };
        assert!(Rng::from_state(&bad)
            .unwrap_err()
            .to_string()
            .contains("state"));
        assert!(Rng::from_raw(1, 2).is_err());
    }

    #[test]
    fn seeds_and_streams_are_independent() {
        let first = |seed, stream| Rng::new(seed, stream).next_u64();
        assert_eq!(first(1, Stream::Data), first(1, Stream::Data));
        assert_ne!(first(1, Stream::Data), first(2, Stream::Data));
        assert_ne!(first(1, Stream::Data), first(1, Stream::Dropout));
        assert_ne!(first(1, Stream::Init), first(1, Stream::Dropout));
    }

    #[test]
    fn uniform_below_and_shuffle_have_the_right_distribution() {
        let mut rng = Rng::new(3, Stream::Data);
        let n = 60_000;
        let draws: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
        assert!(draws.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = draws.iter().map(|&u| f64::from(u)).sum::<f64>() / n as f64;
        // Standard error of the mean of U(0,1) is 1/sqrt(12 n) ≈ 0.0012; allow 5 of them.
        assert!((mean - 0.5).abs() < 0.006, "mean {mean}");

        let mut counts = [0u32; 6];
        for _ in 0..n {
            counts[rng.below(6) as usize] += 1;
        }
        for c in counts {
            // Binomial(n, 1/6): sd ≈ 91; allow 5 sd.
            assert!((f64::from(c) - n as f64 / 6.0).abs() < 460.0, "{counts:?}");
        }
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.below(1), 0);

        let mut items: Vec<u32> = (0..50).collect();
        rng.shuffle(&mut items);
        assert_ne!(items, (0..50).collect::<Vec<_>>());
        items.sort_unstable();
        assert_eq!(items, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn dropout_mask_drops_p_and_keeps_the_expectation() {
        let mut rng = Rng::new(11, Stream::Dropout);
        let p = 0.25f32;
        let mut mask = vec![0.0f32; 40_000];
        rng.dropout_mask(&mut mask, p);
        let dropped = mask.iter().filter(|&&m| m == 0.0).count() as f64 / mask.len() as f64;
        // sd of the dropped fraction ≈ 0.0022; allow 5 sd.
        assert!((dropped - 0.25).abs() < 0.011, "dropped {dropped}");
        assert!(mask.iter().all(|&m| m == 0.0 || m == 1.0 / 0.75));
        let mean = mask.iter().map(|&m| f64::from(m)).sum::<f64>() / mask.len() as f64;
        assert!((mean - 1.0).abs() < 0.015, "mean {mean}");
    }
}
