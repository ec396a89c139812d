//! Paged attention over a ragged batch: the reference's per-row function, run in parallel over
//! the packed rows (each row reads its own sequence's blocks and writes its own output row).

use crate::exec::Exec;
use rayon::prelude::*;
use tperf_core::backend::BackendError;
use tperf_core::ops::paged_attention::{
    paged_attention_row, PagedAttention, PagedAttentionIo, PagedLayout,
};

pub(crate) fn exec(cx: &mut Exec<'_>, a: &PagedAttention) -> Result<(), BackendError> {
    let io: PagedAttentionIo = cx.call.operands(a)?;
    let n = a.rows();
    let (qkv, k_pool, v_pool) = (
        &cx.f32(&io.qkv)?,
        &cx.f32(&io.k_pool)?,
        &cx.f32(&io.v_pool)?,
    );
    let layout = PagedLayout {
        positions: cx.i32(&io.positions)?,
        row_seq: cx.i32(&io.row_seq)?,
        ctx_lens: cx.i32(&io.ctx_lens)?,
        block_table: cx.i32(&io.block_table)?,
    };
    if a.h_kv == 0 || !a.h.is_multiple_of(a.h_kv) {
        return Err(cx.unsupported(format!(
            "H = {} is not a multiple of H_kv = {}",
            a.h, a.h_kv
        )));
    }
    let seqs = layout.ctx_lens.len();
    cx.check_len("positions", layout.positions.len(), n)?;
    cx.check_len("row_seq", layout.row_seq.len(), n)?;
    cx.check_len("block_table", layout.block_table.len(), seqs * a.max_blocks)?;
    let blocks = io.k_pool.shape.first().copied().unwrap_or(0);
    // Every key a row can read must lie in a block the table names and the pool has.
    for r in 0..n {
        let s = layout.row_seq[r];
        if s < 0 || s as usize >= seqs {
            return Err(cx.invalid(format!("row {r} names sequence {s} of {seqs}")));
        }
        let (ctx, pos) = (layout.ctx_lens[s as usize], layout.positions[r]);
        if pos < 0 || ctx <= pos || ctx as usize > a.max_blocks * a.block_size {
            return Err(cx.invalid(format!(
                "row {r} at position {pos} of a sequence of {ctx} keys does not fit a table of {} blocks of {}",
                a.max_blocks, a.block_size
            )));
        }
    }
    for s in 0..seqs {
        let used = (layout.ctx_lens[s] as usize).div_ceil(a.block_size);
        let table = &layout.block_table[s * a.max_blocks..][..used];
        if let Some(&b) = table.iter().find(|&&b| b < 0 || b as usize >= blocks) {
            return Err(cx.invalid(format!("sequence {s} names block {b} of {blocks}")));
        }
    }
    let width = (a.h + 2 * a.h_kv) * a.d;
    let row_out = a.h * a.d;
    let out = cx.outs.f32(&io.out)?;
    out.par_chunks_mut(row_out)
        .take(n)
        .enumerate()
        .for_each(|(r, o)| {
            let q = &qkv[r * width..(r + 1) * width];
            paged_attention_row(a, r, q, k_pool, v_pool, &layout, o);
        });
    Ok(())
}
