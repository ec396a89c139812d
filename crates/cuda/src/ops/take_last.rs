//! The row gathers (kernels/take_last.cu): each sequence's last position of a batch, and the given
//! rows of a ragged batch (each sequence's last token, for its logits).

use crate::backend::CudaBackend;
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::take_last::{TakeLast, TakeLastIo, TakeRows, TakeRowsIo};

const SRC: &str = "take_last";

impl CudaBackend {
    pub(crate) fn take_last(&mut self, call: &OpCall, t: &TakeLast) -> Result<(), BackendError> {
        let io: TakeLastIo = call.operands(t)?;
        let (b, tt, c) = (t.b as u64, t.t as u64, t.c as u64);
        let args = [
            self.arg(call, &io.x, b * tt * c)?,
            self.arg(call, &io.last, b * c)?,
            Arg::I32(t.b as i32),
            Arg::I32(t.t as i32),
            Arg::I32(t.c as i32),
        ];
        self.launch_1d(call, SRC, "take_last", b * c, &args)
    }

    /// Every host-written row index lies in x.
    pub(crate) fn check_take_rows(
        &self,
        call: &OpCall,
        t: &TakeRows,
        io: &TakeRowsIo,
    ) -> Result<(), BackendError> {
        let n = (io.x.numel() / (t.c as u64).max(1)) as i64;
        self.check_range(call, &io.rows, (0, n), "row")
    }

    pub(crate) fn take_rows(&mut self, call: &OpCall, t: &TakeRows) -> Result<(), BackendError> {
        let io: TakeRowsIo = call.operands(t)?;
        self.check_take_rows(call, t, &io)?;
        let (s, c) = (t.s as u64, t.c as u64);
        let args = [
            self.arg(call, &io.x, io.x.numel())?,
            self.arg(call, &io.rows, s)?,
            self.arg(call, &io.out, s * c)?,
            Arg::I32(t.s as i32),
            Arg::I32(t.c as i32),
        ];
        self.launch_1d(call, SRC, "take_rows", s * c, &args)
    }
}
