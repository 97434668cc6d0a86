//! Token sampling: repetition penalty, temperature, top-k, top-p, min-p, driven by a small
//! seeded PRNG so one seed always gives one completion.

/// How the next token is picked from the logits. `temperature <= 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely one's; 0 keeps all.
    pub min_p: f32,
    /// HF-style penalty on every token already in the context: positive logits are divided
    /// by it, negative ones multiplied; 1 disables it.
    pub repeat_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Rejects values that would make sampling meaningless instead of silently clamping them.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min-p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(format!(
                "repeat penalty must be a finite number > 0, got {}",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

/// The sampler's generator: the workspace's SplitMix64, so a seed reproduces across
/// platforms and versions.
pub use bora_rng::SplitMix64 as Rng;

/// Picks tokens one at a time; holds the PRNG state and a reusable candidate buffer.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = Rng::new(params.seed);
        Sampler {
            params,
            rng,
            candidates: Vec::new(),
        }
    }

    /// Picks the next token from `logits` (one row, vocab-sized). `context` is every token
    /// so far (prompt and generated), for the repetition penalty. `logits` is modified by it.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> u32 {
        let p = &self.params;
        if p.repeat_penalty != 1.0 {
            apply_repeat_penalty(logits, context, p.repeat_penalty);
        }
        if p.temperature <= 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        if self.candidates.is_empty() {
            return argmax(logits);
        }
        let by_logit_desc =
            |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < self.candidates.len() {
            self.candidates
                .select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            self.candidates.truncate(p.top_k);
        }
        self.candidates.sort_unstable_by(by_logit_desc);
        // Softmax in place: the values become probabilities.
        let max = self.candidates[0].1;
        let mut sum = 0f64;
        for c in self.candidates.iter_mut() {
            c.1 = (c.1 - max).exp();
            sum += c.1 as f64;
        }
        for c in self.candidates.iter_mut() {
            c.1 = (c.1 as f64 / sum) as f32;
        }
        if p.top_p < 1.0 {
            let mut cum = 0f64;
            let mut keep = self.candidates.len();
            for (i, c) in self.candidates.iter().enumerate() {
                cum += c.1 as f64;
                if cum >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep);
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * self.candidates[0].1;
            let keep = self
                .candidates
                .iter()
                .take_while(|c| c.1 >= floor)
                .count()
                .max(1);
            self.candidates.truncate(keep);
        }
        let total: f64 = self.candidates.iter().map(|c| c.1 as f64).sum();
        let mut u = self.rng.next_f64() * total;
        for c in &self.candidates {
            u -= c.1 as f64;
            if u < 0.0 {
                return c.0;
            }
        }
        self.candidates[self.candidates.len() - 1].0
    }
}

/// The index of the largest logit (the first one on ties, like torch's argmax on CPU).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] || (logits[best].is_nan() && !l.is_nan()) {
            best = i;
        }
    }
    best as u32
}

fn apply_repeat_penalty(logits: &mut [f32], context: &[u32], penalty: f32) {
    let mut seen = vec![false; logits.len()];
    for &t in context {
        if let Some(s) = seen.get_mut(t as usize) {
            if !*s {
                *s = true;
                let l = &mut logits[t as usize];
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, -0.5, 2.5, 0.0, 2.9, -3.0, 1.5]
    }

    fn softmax(x: &[f32], t: f32) -> Vec<f64> {
        let m = x.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let e: Vec<f64> = x
            .iter()
            .map(|&v| ((v as f64 - m) / t as f64).exp())
            .collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    fn histogram(params: SamplingParams, n: usize) -> Vec<f64> {
        let mut s = Sampler::new(params);
        let mut counts = vec![0f64; logits().len()];
        for _ in 0..n {
            counts[s.sample(&mut logits(), &[]) as usize] += 1.0;
        }
        counts.iter().map(|c| c / n as f64).collect()
    }

    #[test]
    fn greedy_is_argmax_and_ignores_seed() {
        for seed in 0..4 {
            let mut s = Sampler::new(SamplingParams {
                seed,
                ..Default::default()
            });
            assert_eq!(s.sample(&mut logits(), &[]), 1);
        }
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 1,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut logits(), &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_differs() {
        let params = SamplingParams {
            temperature: 1.5,
            seed: 7,
            ..Default::default()
        };
        let run = |p: SamplingParams| {
            let mut s = Sampler::new(p);
            (0..64)
                .map(|_| s.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(params.clone()), run(params.clone()));
        assert_ne!(
            run(params.clone()),
            run(SamplingParams { seed: 8, ..params })
        );
    }

    #[test]
    fn temperature_sampling_follows_softmax() {
        let n = 200_000;
        let got = histogram(
            SamplingParams {
                temperature: 0.8,
                seed: 1,
                ..Default::default()
            },
            n,
        );
        let want = softmax(&logits(), 0.8);
        for (g, w) in got.iter().zip(&want) {
            // 5 standard deviations of a binomial proportion.
            assert!(
                (g - w).abs() <= 5.0 * (w * (1.0 - w) / n as f64).sqrt() + 1e-9,
                "{got:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn top_k_top_p_min_p_keep_the_right_sets() {
        let n = 50_000;
        let probs = softmax(&logits(), 1.0);
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));

        let got = histogram(
            SamplingParams {
                temperature: 1.0,
                top_k: 3,
                seed: 2,
                ..Default::default()
            },
            n,
        );
        let kept: Vec<usize> = (0..got.len()).filter(|&i| got[i] > 0.0).collect();
        let mut want = order[..3].to_vec();
        want.sort();
        assert_eq!(kept, want);

        // Nucleus: the smallest prefix of the sorted probabilities reaching top_p.
        let top_p = 0.8;
        let mut cum = 0.0;
        let nucleus = order.iter().take_while(|&&i| {
            let before = cum;
            cum += probs[i];
            before < top_p
        });
        let mut want: Vec<usize> = nucleus.cloned().collect();
        want.sort();
        let got = histogram(
            SamplingParams {
                temperature: 1.0,
                top_p: top_p as f32,
                seed: 3,
                ..Default::default()
            },
            n,
        );
        let kept: Vec<usize> = (0..got.len()).filter(|&i| got[i] > 0.0).collect();
        assert_eq!(kept, want);

        let min_p = 0.3;
        let pmax = probs[order[0]];
        let want: Vec<usize> = (0..probs.len())
            .filter(|&i| probs[i] >= min_p * pmax)
            .collect();
        let got = histogram(
            SamplingParams {
                temperature: 1.0,
                min_p: min_p as f32,
                seed: 4,
                ..Default::default()
            },
            n,
        );
        let kept: Vec<usize> = (0..got.len()).filter(|&i| got[i] > 0.0).collect();
        assert_eq!(kept, want);
    }

    #[test]
    fn repeat_penalty_divides_positive_and_multiplies_negative_once() {
        let mut l = logits();
        let orig = logits();
        apply_repeat_penalty(&mut l, &[1, 2, 1, 200], 2.0);
        for i in 0..l.len() {
            let want = match i {
                1 => orig[1] / 2.0,
                2 => orig[2] * 2.0,
                _ => orig[i],
            };
            assert_eq!(l[i], want);
        }
        // Greedy with a strong penalty moves off the repeated best token.
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 2.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut logits(), &[1]), 5);
    }

    #[test]
    fn validate_rejects_nonsense() {
        assert!(SamplingParams::default().validate().is_ok());
        assert!(SamplingParams {
            temperature: -1.0,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(SamplingParams {
            top_p: 0.0,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(SamplingParams {
            min_p: 1.5,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(SamplingParams {
            repeat_penalty: 0.0,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
