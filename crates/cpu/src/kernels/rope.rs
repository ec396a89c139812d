//! RoPE in place over rows in parallel; each row computes its position's D/2 (cos, sin) pairs
//! once and applies them to all H + H_kv rotated heads.

use crate::exec::Exec;
use rayon::prelude::*;
use tperf_core::backend::BackendError;
use tperf_core::ops::rope::{Rope, RopeIo};

fn rotate(r: &Rope, qkv: &mut [f32], positions: Option<&[i32]>, sign: f64) {
    let (w, d) = (r.row_width(), r.d);
    qkv.par_chunks_mut(w).enumerate().for_each_init(
        Vec::new,
        |table: &mut Vec<(f32, f32)>, (row, x)| {
            let pos = r.row_position(row, positions);
            table.clear();
            table.extend((0..d / 2).map(|i| {
                let a = sign * r.angle(pos, i);
                (a.cos() as f32, a.sin() as f32)
            }));
            for head in x[..(r.h_q + r.h_kv) * d].chunks_mut(d) {
                for (pair, &(cos, sin)) in head.chunks_exact_mut(2).zip(table.iter()) {
                    let (x0, x1) = (pair[0], pair[1]);
                    pair[0] = x0 * cos - x1 * sin;
                    pair[1] = x0 * sin + x1 * cos;
                }
            }
        },
    );
}

pub fn forward(r: &Rope, qkv: &mut [f32]) {
    rotate(r, qkv, None, 1.0);
}

/// Each row at its own position (a ragged batch).
pub fn forward_rows(r: &Rope, qkv: &mut [f32], positions: &[i32]) {
    rotate(r, qkv, Some(positions), 1.0);
}

pub fn backward(r: &Rope, dqkv: &mut [f32]) {
    rotate(r, dqkv, None, -1.0);
}

/// The op's dispatch (forward or backward): rotates qkv in place.
pub(crate) fn exec(cx: &mut Exec<'_>, r: &Rope, backward_pass: bool) -> Result<(), BackendError> {
    let io: RopeIo = cx.call.operands(r)?;
    let positions = match &io.positions {
        Some(p) => {
            let p = cx.i32(p)?;
            cx.check_len("positions", p.len(), r.b * r.t)?;
            Some(p)
        }
        None => None,
    };
    let qkv = cx.outs.f32(&io.qkv)?;
    let sign = if backward_pass { -1.0 } else { 1.0 };
    rotate(r, qkv, positions, sign);
    Ok(())
}
