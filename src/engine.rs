//! Computes one FA op on the CPU as the configuration says: dense, or a selection of keys per
//! query block followed by exact attention over them. Owns the buffers reused across ops.

use crate::config::Config;
use crate::kernels::{self, Counters, Op, Scratch};
use crate::select::Selector;
use crate::stats::Stats;
use anyhow::Result;
use std::time::Instant;

/// Whether the op of model layer `layer` is computed densely whatever the mode (DHSA_DENSE_LAYERS).
pub fn dense_layer(cfg: &Config, layer: Option<u32>) -> bool {
    layer.is_some_and(|l| (l as usize) < cfg.dense_layers)
}

#[derive(Default)]
pub struct CpuEngine {
    scratch: Scratch,
    selector: Selector,
}

impl CpuEngine {
    /// Computes `op` into its dst and returns what it did.
    ///
    /// # Safety
    /// `op`'s pointers must address valid tensors of the shapes it describes (see kernels::attention).
    pub unsafe fn compute(&mut self, op: &Op, cfg: &Config, n_threads: usize) -> Result<Stats> {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.compute_at(op, cfg, n_threads, None) }
    }

    /// `compute` for the op of model layer `layer` (from the node name), which a probe installed
    /// with `capture::set_hook` sees after the op is computed.
    ///
    /// # Safety
    /// As for `compute`.
    pub unsafe fn compute_at(&mut self, op: &Op, cfg: &Config, n_threads: usize, layer: Option<u32>) -> Result<Stats> {
        let mut st = Stats { ops: 1, ..Default::default() };
        let mut c = Counters::default();
        let t0 = Instant::now();
        let sel = if dense_layer(cfg, layer) {
            None
        } else {
            // SAFETY: forwarded from this function's contract.
            unsafe { self.selector.select(op, cfg, n_threads)? }
        };
        let t1 = Instant::now();
        match &sel {
            Some(s) if s.sparse_blocks > 0 => {
                st.sparse_ops = 1;
                // SAFETY: as above; the plan was built for this op.
                // Visible keys are always counted: the runner's kept fraction needs them, and the
                // count is one pass over the mask (shared by all heads), small next to attention.
                unsafe { kernels::attention(op, Some(&s.plan), n_threads, &mut self.scratch, true, &mut c)? };
            }
            _ => {
                st.dense_ops = 1;
                // SAFETY: as above. A plan whose blocks are all dense equals the dense op.
                unsafe { kernels::attention(op, None, n_threads, &mut self.scratch, true, &mut c)? };
            }
        }
        st.select_ms = (t1 - t0).as_secs_f64() * 1e3;
        st.attn_ms = t1.elapsed().as_secs_f64() * 1e3;
        st.keys_visible = c.keys_visible as u64;
        st.keys_attended = c.keys_attended as u64;
        crate::capture::observe(layer, op, sel.as_ref().map(|s| &s.plan), cfg, n_threads);
        Ok(st)
    }

    /// The selection of the last op (for inspection and tests).
    pub fn selector(&mut self) -> &mut Selector {
        &mut self.selector
    }
}
