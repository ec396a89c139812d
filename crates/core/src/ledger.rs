//! The memory ledger every backend keeps: bytes in use by category, their peak, and (when
//! asked) every allocation and free. One type, so that "measured memory equals modelled memory"
//! compares two runs of the same code rather than three copies kept in step.
//!
//! A tensor counts at its dtype width (`Tensor::size_bytes`), not at what an allocator rounded it
//! to: that is the rule the Meta backend predicts with. What a device allocator reserved from
//! its driver is a different quantity and stays with that allocator.

use crate::dtype::DType;
use crate::tensor::{MemCategory, Tensor};
use std::fmt::Display;

/// One allocation or free, placed after `ops_before` ops of the record.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemEvent {
    pub ops_before: usize,
    pub name: String,
    pub category: MemCategory,
    /// The buffer's element type: what `tperf precision` lists per tensor role and policy.
    pub dtype: DType,
    /// Positive for an allocation, negative for a free.
    pub delta_bytes: i64,
}

#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Bytes in use by category, indexed by the category's place in [`MemCategory::ALL`]: every
    /// allocation and free of every step lands here, on every backend.
    in_use: [u64; MemCategory::ALL.len()],
    peak_bytes: u64,
    /// `None` until [`Ledger::enable_events`]: a long training run would grow it without bound.
    events: Option<Vec<MemEvent>>,
}

impl Ledger {
    /// A ledger that counts but keeps no event log.
    pub fn new() -> Self {
        Self::default()
    }

    /// A ledger that logs every allocation and free from the start.
    pub fn with_events() -> Self {
        Ledger {
            events: Some(Vec::new()),
            ..Self::default()
        }
    }

    /// Logs every allocation and free from now on (a no-op when already logging).
    pub fn enable_events(&mut self) {
        self.events.get_or_insert_with(Vec::new);
    }

    /// Records that `tensor`, named `name`, was allocated after `ops_before` ops. The name is
    /// formatted only when the event log is on.
    pub fn alloc(&mut self, ops_before: usize, name: &(impl Display + ?Sized), tensor: &Tensor) {
        self.record(ops_before, name, tensor, tensor.size_bytes() as i64);
    }

    /// Records that `tensor`, named `name`, was freed after `ops_before` ops.
    pub fn free(&mut self, ops_before: usize, name: &(impl Display + ?Sized), tensor: &Tensor) {
        self.record(ops_before, name, tensor, -(tensor.size_bytes() as i64));
    }

    fn record(
        &mut self,
        ops_before: usize,
        name: &(impl Display + ?Sized),
        tensor: &Tensor,
        delta_bytes: i64,
    ) {
        if let Some(events) = &mut self.events {
            events.push(MemEvent {
                ops_before,
                name: name.to_string(),
                category: tensor.category,
                dtype: tensor.dtype,
                delta_bytes,
            });
        }
        let slot = &mut self.in_use[tensor.category as usize];
        *slot = slot.saturating_add_signed(delta_bytes);
        self.peak_bytes = self.peak_bytes.max(self.total_bytes_in_use());
    }

    /// Bytes in use in one category.
    pub fn bytes_in_use(&self, category: MemCategory) -> u64 {
        self.in_use[category as usize]
    }

    pub fn total_bytes_in_use(&self) -> u64 {
        self.in_use.iter().sum()
    }

    /// The most bytes in use at once since the ledger began or [`Ledger::reset_peak`].
    pub fn peak_bytes(&self) -> u64 {
        self.peak_bytes
    }

    /// Starts a new peak from the bytes in use now (to measure one pass's peak).
    pub fn reset_peak(&mut self) {
        self.peak_bytes = self.total_bytes_in_use();
    }

    /// The events logged so far; empty when the log is off.
    pub fn events(&self) -> &[MemEvent] {
        self.events.as_deref().unwrap_or(&[])
    }

    /// The events logged since the log was enabled; logging stops.
    pub fn take_events(&mut self) -> Vec<MemEvent> {
        self.events.take().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorId;

    fn tensor(id: u32, numel: usize, dtype: DType, category: MemCategory) -> Tensor {
        Tensor {
            id: TensorId(id),
            shape: vec![numel],
            dtype,
            category,
        }
    }

    #[test]
    fn counts_by_category_at_dtype_width_and_keeps_the_peak() {
        let w = tensor(0, 10, DType::F32, MemCategory::Weights);
        let a = tensor(1, 8, DType::Bf16, MemCategory::Activations);
        let mut l = Ledger::with_events();
        l.alloc(0, "w", &w);
        l.alloc(1, "a", &a);
        assert_eq!(l.bytes_in_use(MemCategory::Weights), 40);
        assert_eq!(l.bytes_in_use(MemCategory::Activations), 16);
        assert_eq!(l.total_bytes_in_use(), 56);
        l.free(2, "a", &a);
        assert_eq!(l.total_bytes_in_use(), 40);
        assert_eq!(l.peak_bytes(), 56);
        l.reset_peak();
        assert_eq!(l.peak_bytes(), 40);
        let deltas: Vec<_> = l
            .events()
            .iter()
            .map(|e| (e.ops_before, e.delta_bytes))
            .collect();
        assert_eq!(deltas, [(0, 40), (1, 16), (2, -16)]);
        assert_eq!(l.take_events().len(), 3);
        l.alloc(3, "a", &a);
        assert!(l.events().is_empty(), "taking the log stops it");
    }

    #[test]
    fn a_category_indexes_its_own_slot() {
        for (i, c) in MemCategory::ALL.into_iter().enumerate() {
            assert_eq!(c as usize, i, "{c}");
        }
    }

    #[test]
    fn logs_nothing_unless_enabled() {
        let mut l = Ledger::new();
        l.alloc(0, "x", &tensor(0, 4, DType::F32, MemCategory::Workspace));
        assert!(l.events().is_empty());
        assert_eq!(l.peak_bytes(), 16);
    }
}
