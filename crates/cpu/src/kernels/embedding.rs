//! Embedding: the gather in parallel over tokens. The backward's scatter-add stays sequential
//! (two tokens may share a row); it is n·C adds, small beside any matmul of the step.

use crate::exec::{Exec, Stored};
use rayon::prelude::*;
use std::borrow::Cow;
use tperf_core::backend::BackendError;
use tperf_core::ops::embedding::{
    sinusoid, Embedding, EmbeddingBackwardIo, EmbeddingIo, PositionTable,
};

/// Row i at position `positions[i]` when given (a ragged batch), else as the descriptor says.
pub fn forward(
    e: &Embedding,
    tokens: &[i32],
    wte: &[f32],
    wpe: Option<&[f32]>,
    positions: Option<&[i32]>,
    out: &mut [f32],
) {
    let c = e.c;
    let s = if e.scale { (c as f32).sqrt() } else { 1.0 };
    out.par_chunks_mut(c).enumerate().for_each(|(i, row)| {
        let tok = tokens[i] as usize;
        let p = e.row_position(i, positions);
        let src = &wte[tok * c..][..c];
        match (e.positions, wpe) {
            (PositionTable::Learned, Some(wpe)) => {
                let pos = &wpe[p * c..][..c];
                for j in 0..c {
                    row[j] = src[j] * s + pos[j];
                }
            }
            (PositionTable::Sinusoidal, _) => {
                for j in 0..c {
                    row[j] = src[j] * s + sinusoid::<f32>(p, j, c);
                }
            }
            _ => row.iter_mut().zip(src).for_each(|(o, &w)| *o = w * s),
        }
    });
}

pub fn backward(
    e: &Embedding,
    tokens: &[i32],
    dout: &[f32],
    dwte: &mut [f32],
    mut dwpe: Option<&mut [f32]>,
) {
    let c = e.c;
    let s = if e.scale { (c as f32).sqrt() } else { 1.0 };
    if !e.accumulate {
        dwte.par_iter_mut().for_each(|v| *v = 0.0);
    }
    if let Some(d) = dwpe.as_deref_mut() {
        d.par_iter_mut().for_each(|v| *v = 0.0);
    }
    for (i, g) in dout.chunks(c).enumerate().take(e.n) {
        let tok = tokens[i] as usize;
        for (w, &g) in dwte[tok * c..][..c].iter_mut().zip(g) {
            *w += g * s;
        }
        if let Some(d) = dwpe.as_deref_mut() {
            let p = e.position(i);
            for (w, &g) in d[p * c..][..c].iter_mut().zip(g) {
                *w += g;
            }
        }
    }
}

/// The op's dispatch: named operands in, kernel out.
pub(crate) fn exec(cx: &mut Exec<'_>, e: &Embedding) -> Result<(), BackendError> {
    let io: EmbeddingIo = cx.call.operands(e)?;
    let tokens = cx.i32(&io.tokens)?;
    cx.check_ids(tokens, e.vocab, "token")?;
    cx.check_len("tokens", tokens.len(), e.n)?;
    let stored = cx.stored(&io.wte)?;
    cx.check_len("wte", stored.len(), e.vocab * e.c)?;
    // A 16-bit table: widen only the n rows the tokens name (n·C, not V·C) and gather from them.
    let (wte, gather_ids): (Cow<[f32]>, Cow<[i32]>) = match stored {
        Stored::F32(w) => (Cow::Borrowed(w), Cow::Borrowed(tokens)),
        table => {
            let mut rows = vec![0.0; e.n * e.c];
            rows.par_chunks_mut(e.c.max(1))
                .zip(tokens.par_iter())
                .for_each(|(row, &tok)| table.widen_into(tok as usize * e.c, row));
            (Cow::Owned(rows), Cow::Owned((0..e.n as i32).collect()))
        }
    };
    let wpe_data = cx.f32_opt(&io.wpe)?;
    let wpe = wpe_data.as_deref();
    let positions = match &io.positions {
        Some(p) => {
            let p = cx.i32(p)?;
            cx.check_len("positions", p.len(), e.n)?;
            if let Some(&bad) = p.iter().find(|&&p| p < 0) {
                return Err(cx.invalid(format!("position {bad} is negative")));
            }
            Some(p)
        }
        None => None,
    };
    if let Some(wpe) = wpe {
        let rows = wpe.len() / e.c.max(1);
        let last = match positions {
            Some(p) => p.iter().map(|&p| p as usize + 1).max().unwrap_or(0),
            None => e.pos_offset + e.t,
        };
        if last > rows {
            return Err(cx.invalid(format!(
                "positions up to {last} exceed the learned position table of {rows}: use a sequence within the model's context"
            )));
        }
    }
    forward(e, &gather_ids, &wte, wpe, positions, cx.outs.f32(&io.x)?);
    Ok(())
}

pub(crate) fn exec_backward(cx: &mut Exec<'_>, e: &Embedding) -> Result<(), BackendError> {
    let io: EmbeddingBackwardIo = cx.call.operands(e)?;
    let tokens = cx.i32(&io.tokens)?;
    cx.check_ids(tokens, e.vocab, "token")?;
    let dout = &cx.f32(&io.dx)?;
    match &io.dwpe {
        Some(dwpe) => {
            let [dwte, dwpe] = cx.outs.f32s([&io.dwte, dwpe])?;
            backward(e, tokens, dout, dwte, Some(dwpe));
        }
        None => backward(e, tokens, dout, cx.outs.f32(&io.dwte)?, None),
    }
    Ok(())
}
