//! A LoRA training step: the decoder's forward saving what the backward needs, then the
//! backward from the loss down to the first layer, producing LoRA gradients only.
//!
//! Every buffer is planned once for the trainer's `(batch, seq)` shape in one
//! [`ArenaLayout`] and allocated once, so a step allocates nothing. With `recompute`, only
//! each layer's input is kept and the layer's forward runs again just before its backward:
//! one layer's activations instead of all of them, for about a third more compute.

use bora_compute::{
    cross_entropy_chunked, rmsnorm_backward, rmsnorm_forward, swiglu_forward, Arena, ArenaLayout,
    Buf, CrossEntropy, Scratch,
};

use crate::error::{ModelError, Result};
use crate::layer::{Adapt, Attend, AttnActs, Grads, LayerCtx, MlpActs};
use crate::lora::{Lora, LoraSpec};
use crate::model::Model;

/// One batch as the trainer reads it, every array `[batch_size · seq_len]` row-major (the
/// layout of `bora_data::Batch`): `targets[i] = None` masks token i out of the loss,
/// `positions` restart at 0 for each example, and `segments` are the cumulative example
/// starts over the flattened batch, `[0, …, batch_size · seq_len]`, so no token attends to
/// another example.
#[derive(Debug, Clone, Copy)]
pub struct TrainBatch<'a> {
    pub inputs: &'a [u32],
    pub targets: &'a [Option<u32>],
    pub positions: &'a [u32],
    pub segments: &'a [usize],
    pub batch_size: usize,
    pub seq_len: usize,
}

/// Rows of logits the loss computes at a time: `256 × vocab` floats of scratch (48 MiB for
/// a 49k vocabulary). Each chunk packs (or dequantizes) the whole output weight twice, so
/// fewer, taller chunks run the two head products at close to full matmul speed; 64 rows
/// took 8% longer per step.
const LOSS_CHUNK_ROWS: usize = 256;

/// One layer's saved activations (regions of the trainer's arena).
#[derive(Debug, Clone, Copy)]
struct Saved {
    attn: [Buf; 11],
    x_mid: Buf,
    mlp: [Buf; 8],
}

fn attn_acts([xn, rstd, q, k, v, att, lse, u0, u1, u2, u3]: [&mut [f32]; 11]) -> AttnActs<'_> {
    AttnActs {
        xn,
        rstd,
        q,
        k,
        v,
        att,
        lse,
        us: [u0, u1, u2, u3],
    }
}

fn mlp_acts([xn, rstd, gate, up, h, u0, u1, u2]: [&mut [f32]; 8]) -> MlpActs<'_> {
    MlpActs {
        xn,
        rstd,
        gate,
        up,
        h,
        us: [u0, u1, u2],
    }
}

/// Runs training steps of one `(batch, seq)` shape on a model.
#[derive(Debug)]
pub struct Trainer {
    batch_size: usize,
    seq_len: usize,
    rank: usize,
    recompute: bool,
    arena: Arena,
    /// The residual stream as it runs through the layers.
    x: Buf,
    /// Each layer's input.
    x_in: Vec<Buf>,
    /// One set per layer, or one shared set with `recompute`.
    saved: Vec<Saved>,
    /// The adapter input after dropout.
    xd: Buf,
    /// The final norm's output and its saved `rstd`.
    hidden: Buf,
    rstd: Buf,
    /// Gradient of the residual stream, and the backward's scratch (see [`Grads`]).
    dx: Buf,
    grads: [Buf; 11],
    positions: Vec<usize>,
    scratch: Scratch,
}

impl Trainer {
    /// Plans and allocates every buffer for batches of `batch_size × seq_len` tokens and
    /// adapters of `spec`'s rank.
    pub fn new(
        model: &Model,
        spec: &LoraSpec,
        batch_size: usize,
        seq_len: usize,
        recompute: bool,
    ) -> Result<Self> {
        let c = &model.config;
        if batch_size == 0 || seq_len == 0 {
            return Err(ModelError::Empty("a training batch of 0 tokens"));
        }
        if spec.rank == 0 || spec.targets.is_empty() || !(0.0..1.0).contains(&spec.dropout) {
            return Err(ModelError::Batch(format!(
                "LoRA needs a rank > 0, at least one target and a dropout in [0, 1); got rank {}, {} targets, dropout {}",
                spec.rank,
                spec.targets.len(),
                spec.dropout
            )));
        }
        if seq_len > model.context() {
            return Err(ModelError::ContextOverflow {
                needed: seq_len,
                context: model.context(),
                prompt: seq_len,
            });
        }
        let t = batch_size
            .checked_mul(seq_len)
            .ok_or(ModelError::Batch("batch_size × seq_len overflows".into()))?;
        let (d, qd, kvd, f, h, r) = (
            c.hidden_size,
            c.q_dim(),
            c.kv_dim(),
            c.intermediate_size,
            c.n_heads,
            spec.rank,
        );
        let max_in = d.max(qd).max(f);
        let mut lay = ArenaLayout::new();
        let u = |lay: &mut ArenaLayout, target| {
            lay.alloc(if spec.targets.contains(&target) {
                t * r
            } else {
                0
            })
        };
        use crate::lora::LoraTarget as L;
        let sets = if recompute { 1 } else { c.n_layers };
        let mut saved = Vec::with_capacity(sets);
        // The norms' outputs and the SwiGLU product are cheap to recompute from what is
        // saved (the norm input and `rstd`; gate and up), so every layer shares one copy:
        // about 30% less activation memory.
        let (xn, hidden) = (lay.alloc(t * d), lay.alloc(t * f));
        for _ in 0..sets {
            let attn = [
                xn,
                lay.alloc(t),
                lay.alloc(t * qd),
                lay.alloc(t * kvd),
                lay.alloc(t * kvd),
                lay.alloc(t * qd),
                lay.alloc(t * h),
                u(&mut lay, L::Q),
                u(&mut lay, L::K),
                u(&mut lay, L::V),
                u(&mut lay, L::O),
            ];
            let x_mid = lay.alloc(t * d);
            let mlp = [
                xn,
                lay.alloc(t),
                lay.alloc(t * f),
                lay.alloc(t * f),
                hidden,
                u(&mut lay, L::Gate),
                u(&mut lay, L::Up),
                u(&mut lay, L::Down),
            ];
            saved.push(Saved { attn, x_mid, mlp });
        }
        let x_in = (0..c.n_layers).map(|_| lay.alloc(t * d)).collect();
        let dropout = spec.dropout > 0.0;
        let grads = [
            lay.alloc(t * d),
            lay.alloc(t * d),
            lay.alloc(t * qd),
            lay.alloc(t * qd),
            lay.alloc(t * kvd),
            lay.alloc(t * kvd),
            lay.alloc(t * f),
            lay.alloc(t * f),
            lay.alloc(t * f),
            lay.alloc(t * r),
            lay.alloc(if dropout { t * max_in } else { 0 }),
        ];
        let trainer = Trainer {
            batch_size,
            seq_len,
            rank: r,
            recompute,
            x: lay.alloc(t * d),
            x_in,
            saved,
            xd: lay.alloc(if dropout { t * max_in } else { 0 }),
            hidden: lay.alloc(t * d),
            rstd: lay.alloc(t),
            dx: lay.alloc(t * d),
            grads,
            arena: Arena::new(&lay),
            positions: Vec::with_capacity(t),
            scratch: Scratch::new(),
        };
        Ok(trainer)
    }

    fn check(&mut self, model: &Model, lora: &Lora, batch: &TrainBatch<'_>) -> Result<()> {
        let t = self.batch_size * self.seq_len;
        if (batch.batch_size, batch.seq_len) != (self.batch_size, self.seq_len) {
            return Err(ModelError::Batch(format!(
                "a batch of {}×{} tokens given to a trainer built for {}×{}",
                batch.batch_size, batch.seq_len, self.batch_size, self.seq_len
            )));
        }
        for (len, what) in [
            (batch.inputs.len(), "inputs"),
            (batch.targets.len(), "targets"),
            (batch.positions.len(), "positions"),
        ] {
            if len != t {
                return Err(ModelError::Batch(format!(
                    "{what} holds {len} entries, expected {t}"
                )));
            }
        }
        let s = batch.segments;
        if s.len() < 2 || s[0] != 0 || s[s.len() - 1] != t || s.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ModelError::Batch(format!(
                "segments must increase strictly from 0 to {t}"
            )));
        }
        let vocab = model.config.vocab_size;
        if let Some(&token) = batch.inputs.iter().find(|&&i| i as usize >= vocab) {
            return Err(ModelError::TokenOutOfRange { token, vocab });
        }
        if let Some(p) = batch
            .positions
            .iter()
            .find(|&&p| p as usize >= model.context())
        {
            return Err(ModelError::Batch(format!(
                "position {p} is beyond the model's context of {}",
                model.context()
            )));
        }
        if lora.spec().rank != self.rank {
            return Err(ModelError::Batch(format!(
                "an adapter of rank {} given to a trainer built for rank {}",
                lora.spec().rank,
                self.rank
            )));
        }
        self.positions.clear();
        self.positions
            .extend(batch.positions.iter().map(|&p| p as usize));
        Ok(())
    }

    /// Forward of layer `l` from the residual stream in `self.x`, saving into its set.
    fn layer_forward(&mut self, model: &Model, l: usize, adapt: Adapt<'_>, segments: &[usize]) {
        let ctx = LayerCtx {
            cfg: &model.config,
            rope: model.rope(),
        };
        let layer = &model.weights.layers[l];
        let set = self.saved[if self.recompute { 0 } else { l }];
        let shape = model.attention_shape(l);
        let t = self.positions.len();
        let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, x, x_in, x_mid, xd] =
            self.arena.get_disjoint_mut([
                set.attn[0],
                set.attn[1],
                set.attn[2],
                set.attn[3],
                set.attn[4],
                set.attn[5],
                set.attn[6],
                set.attn[7],
                set.attn[8],
                set.attn[9],
                set.attn[10],
                self.x,
                self.x_in[l],
                set.x_mid,
                self.xd,
            ]);
        x_in.copy_from_slice(x);
        let acts = attn_acts([a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10]);
        let mut attend = Attend::Packed(segments);
        layer.attention_forward(
            &ctx,
            l,
            &shape,
            &mut attend,
            &self.positions,
            x,
            acts,
            Some(adapt),
            xd,
            &mut self.scratch,
        );
        x_mid.copy_from_slice(x);
        let [m0, m1, m2, m3, m4, m5, m6, m7, x, xd] = self.arena.get_disjoint_mut([
            set.mlp[0], set.mlp[1], set.mlp[2], set.mlp[3], set.mlp[4], set.mlp[5], set.mlp[6],
            set.mlp[7], self.x, self.xd,
        ]);
        let acts = mlp_acts([m0, m1, m2, m3, m4, m5, m6, m7]);
        layer.mlp_forward(&ctx, l, t, x, acts, Some(adapt), xd, &mut self.scratch);
    }

    /// Embeddings, every layer, the final norm; returns the loss (and its gradient w.r.t. the
    /// final norm's output in the first backward scratch when `backward`).
    fn forward(
        &mut self,
        model: &Model,
        adapt: Adapt<'_>,
        batch: &TrainBatch<'_>,
        backward: bool,
    ) -> Result<CrossEntropy> {
        let (c, w) = (&model.config, &model.weights);
        let d = c.hidden_size;
        let x = self.arena.get_mut(self.x);
        for (row, &tok) in x.chunks_exact_mut(d).zip(batch.inputs) {
            w.embed.dequantize_rows(tok as usize..tok as usize + 1, row);
        }
        for l in 0..c.n_layers {
            self.layer_forward(model, l, adapt, batch.segments);
        }
        let [x, hidden, rstd, dh] =
            self.arena
                .get_disjoint_mut([self.x, self.hidden, self.rstd, self.grads[0]]);
        rmsnorm_forward(hidden, rstd, x, &w.norm, c.rms_norm_eps);
        Ok(cross_entropy_chunked(
            backward.then_some(dh),
            hidden,
            w.output(),
            batch.targets,
            1.0,
            std::env::var("BORA_CE_ROWS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(LOSS_CHUNK_ROWS),
            &mut self.scratch,
        )?)
    }

    /// The summed loss of `batch` under the adapter, forward only (validation).
    pub fn loss(
        &mut self,
        model: &Model,
        lora: &Lora,
        batch: &TrainBatch<'_>,
    ) -> Result<CrossEntropy> {
        self.check(model, lora, batch)?;
        let adapt = model
            .adapt(Some(lora), None)?
            .expect("an adapter was given");
        self.forward(model, adapt, batch, false)
    }

    /// Forward and backward of one batch: adds the gradient of the summed token loss to
    /// `grads` (accumulating; the caller divides by the token count of its accumulation
    /// window) and returns the loss. Dropout masks are a pure function of
    /// `(dropout_seed, layer, target)`.
    pub fn forward_backward(
        &mut self,
        model: &Model,
        lora: &Lora,
        batch: &TrainBatch<'_>,
        grads: &mut Lora,
        dropout_seed: u64,
    ) -> Result<CrossEntropy> {
        self.check(model, lora, batch)?;
        if grads.spec().rank != lora.spec().rank || grads.spec().targets != lora.spec().targets {
            return Err(ModelError::Batch(
                "the gradient container has another layout than the adapter".into(),
            ));
        }
        let adapt = model
            .adapt(Some(lora), Some(dropout_seed))?
            .expect("an adapter was given");
        model.adapt(Some(grads), None)?;
        let ce = self.forward(model, adapt, batch, true)?;
        let (c, w) = (&model.config, &model.weights);
        {
            let [dx, dh, x, rstd] =
                self.arena
                    .get_disjoint_mut([self.dx, self.grads[0], self.x, self.rstd]);
            rmsnorm_backward(dx, None, dh, x, &w.norm, rstd);
        }
        let ctx = LayerCtx {
            cfg: c,
            rope: model.rope(),
        };
        let t = self.positions.len();
        for l in (0..c.n_layers).rev() {
            if self.recompute {
                let [x, x_in] = self.arena.get_disjoint_mut([self.x, self.x_in[l]]);
                x.copy_from_slice(x_in);
                self.layer_forward(model, l, adapt, batch.segments);
            }
            let layer = &w.layers[l];
            let set = self.saved[if self.recompute { 0 } else { l }];
            if !self.recompute {
                let [xn, rstd, gate, up, h, x_mid] = self.arena.get_disjoint_mut([
                    set.mlp[0], set.mlp[1], set.mlp[2], set.mlp[3], set.mlp[4], set.x_mid,
                ]);
                rmsnorm_forward(xn, rstd, x_mid, &layer.ffn_norm, c.rms_norm_eps);
                swiglu_forward(h, gate, up);
            }
            let g = self.grads;
            let [m0, m1, m2, m3, m4, m5, m6, m7, x_mid, dx, g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10] =
                self.arena.get_disjoint_mut([
                    set.mlp[0], set.mlp[1], set.mlp[2], set.mlp[3], set.mlp[4], set.mlp[5],
                    set.mlp[6], set.mlp[7], set.x_mid, self.dx, g[0], g[1], g[2], g[3], g[4], g[5],
                    g[6], g[7], g[8], g[9], g[10],
                ]);
            let mut gs = Grads {
                dxn: g0,
                dnorm: g1,
                datt: g2,
                dq: g3,
                dk: g4,
                dv: g5,
                dh: g6,
                dgate: g7,
                dup: g8,
                du: g9,
                tmp: g10,
            };
            let acts = mlp_acts([m0, m1, m2, m3, m4, m5, m6, m7]);
            layer.mlp_backward(
                l,
                t,
                dx,
                x_mid,
                &acts,
                adapt,
                grads,
                &mut gs,
                &mut self.scratch,
            );
            {
                // The MLP's norm output now holds the shared buffer.
                let [xn, rstd, x_in] =
                    self.arena
                        .get_disjoint_mut([set.attn[0], set.attn[1], self.x_in[l]]);
                rmsnorm_forward(xn, rstd, x_in, &layer.attn_norm, c.rms_norm_eps);
            }
            let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, x_in, dx, g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10] =
                self.arena.get_disjoint_mut([
                    set.attn[0],
                    set.attn[1],
                    set.attn[2],
                    set.attn[3],
                    set.attn[4],
                    set.attn[5],
                    set.attn[6],
                    set.attn[7],
                    set.attn[8],
                    set.attn[9],
                    set.attn[10],
                    self.x_in[l],
                    self.dx,
                    g[0],
                    g[1],
                    g[2],
                    g[3],
                    g[4],
                    g[5],
                    g[6],
                    g[7],
                    g[8],
                    g[9],
                    g[10],
                ]);
            let mut gs = Grads {
                dxn: g0,
                dnorm: g1,
                datt: g2,
                dq: g3,
                dk: g4,
                dv: g5,
                dh: g6,
                dgate: g7,
                dup: g8,
                du: g9,
                tmp: g10,
            };
            let acts = attn_acts([a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10]);
            let shape = model.attention_shape(l);
            layer.attention_backward(
                &ctx,
                l,
                &shape,
                batch.segments,
                &self.positions,
                dx,
                x_in,
                &acts,
                adapt,
                grads,
                &mut gs,
                &mut self.scratch,
            );
        }
        Ok(ce)
    }
}
