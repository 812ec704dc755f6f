//! Computes one FA op on the CPU as the configuration says: dense, or a selection of keys per
//! query block followed by exact attention over them. Owns the buffers reused across ops.

use crate::config::{Config, Mode};
use crate::kernels::{self, Counters, Op, Scratch};
use crate::stats::Stats;
use anyhow::Result;
use std::time::Instant;

#[derive(Default)]
pub struct CpuEngine {
    scratch: Scratch,
}

impl CpuEngine {
    /// Computes `op` into its dst and returns what it did.
    ///
    /// # Safety
    /// `op`'s pointers must address valid tensors of the shapes it describes (see kernels::attention).
    pub unsafe fn compute(&mut self, op: &Op, cfg: &Config, n_threads: usize) -> Result<Stats> {
        let mut st = Stats {
            ops: 1,
            ..Default::default()
        };
        let mut c = Counters::default();
        let t0 = Instant::now();
        match cfg.mode {
            Mode::Dense => {
                // SAFETY: forwarded from this function's contract.
                unsafe {
                    kernels::attention(op, None, n_threads, &mut self.scratch, true, &mut c)?
                };
                st.dense_ops = 1;
            }
            mode => anyhow::bail!("mode {mode} is not implemented on the CPU yet"),
        }
        st.attn_ms = t0.elapsed().as_secs_f64() * 1e3;
        st.keys_visible = c.keys_visible as u64;
        st.keys_attended = c.keys_attended as u64;
        Ok(st)
    }
}
