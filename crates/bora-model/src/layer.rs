//! One decoder block, pre-norm: `x += attention(norm(x))`, then `x += mlp(norm(x))`.
//!
//! Each sub-block's forward reads and writes the shared [`Workspace`] buffers; the LoRA
//! backward of each belongs next to its forward here, reading what the forward saved.

use bora_compute::{
    attention_decode, attention_forward, position_query_scale, rmsnorm_forward, rope_forward,
    swiglu_forward, AttentionShape, RopeTables,
};

use crate::config::ModelConfig;
use crate::model::{sized, KvCache, Workspace};
use crate::weights::LayerWeights;

/// What every layer shares: the config and the RoPE tables.
pub(crate) struct LayerCtx<'a> {
    pub cfg: &'a ModelConfig,
    pub rope: &'a RopeTables,
}

/// How attention finds its keys: packed independent sequences (cumulative starts), or one
/// sequence's KV cache.
pub(crate) enum Attend<'a> {
    Packed(&'a [usize]),
    Cached(&'a mut KvCache),
}

impl LayerWeights {
    /// `x += o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))`, `n = norm(x)`.
    pub(crate) fn attention_forward(
        &self,
        ctx: &LayerCtx<'_>,
        l: usize,
        shape: &AttentionShape,
        attend: &mut Attend<'_>,
        ws: &mut Workspace,
        t: usize,
    ) {
        let (c, w) = (ctx.cfg, self);
        let (d, qd, kvd) = (c.hidden_size, c.q_dim(), c.kv_dim());
        let xn = sized(&mut ws.xn, t * d);
        rmsnorm_forward(
            xn,
            sized(&mut ws.rstd, t),
            &ws.x[..t * d],
            &w.attn_norm,
            c.rms_norm_eps,
        );
        let (q, k, v) = (
            sized(&mut ws.q, t * qd),
            sized(&mut ws.k, t * kvd),
            sized(&mut ws.v, t * kvd),
        );
        w.wq.forward(q, xn, t, false, &mut ws.scratch);
        w.wk.forward(k, xn, t, false, &mut ws.scratch);
        w.wv.forward(v, xn, t, false, &mut ws.scratch);
        let positions = &ws.positions[..t];
        rope_forward(q, positions, c.n_heads, ctx.rope);
        rope_forward(k, positions, c.n_kv_heads, ctx.rope);
        if let Some((beta, original_max)) = c.query_scale {
            position_query_scale(q, qd, positions, beta, original_max);
        }
        let att = sized(&mut ws.att, t * qd);
        match attend {
            Attend::Packed(segments) => {
                attention_forward(
                    att,
                    sized(&mut ws.lse, t * c.n_heads),
                    q,
                    k,
                    v,
                    segments,
                    shape,
                );
            }
            Attend::Cached(cache) => {
                let first = cache.len;
                let (kc, vc) = (&mut cache.k[l], &mut cache.v[l]);
                kc[first * kvd..(first + t) * kvd].copy_from_slice(k);
                vc[first * kvd..(first + t) * kvd].copy_from_slice(v);
                let end = (first + t) * kvd;
                attention_decode(att, q, &kc[..end], &vc[..end], first, shape);
            }
        }
        w.wo.forward(&mut ws.x[..t * d], att, t, true, &mut ws.scratch);
    }

    /// `x += down(silu(gate(n)) ⊙ up(n))`, `n = norm(x)`.
    pub(crate) fn mlp_forward(&self, ctx: &LayerCtx<'_>, ws: &mut Workspace, t: usize) {
        let (c, w) = (ctx.cfg, self);
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let xn = sized(&mut ws.xn, t * d);
        rmsnorm_forward(
            xn,
            sized(&mut ws.rstd, t),
            &ws.x[..t * d],
            &w.ffn_norm,
            c.rms_norm_eps,
        );
        let (gate, up) = (sized(&mut ws.gate, t * f), sized(&mut ws.up, t * f));
        w.w_gate.forward(gate, xn, t, false, &mut ws.scratch);
        w.w_up.forward(up, xn, t, false, &mut ws.scratch);
        let h = sized(&mut ws.h, t * f);
        swiglu_forward(h, gate, up);
        w.w_down
            .forward(&mut ws.x[..t * d], h, t, true, &mut ws.scratch);
    }
}
