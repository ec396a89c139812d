//! The memory timeline of a Meta record: bytes in use by category after every allocation and
//! free, its peak, and what was live at the peak.

use crate::ledger::MemEvent;
use crate::tensor::MemCategory;
use serde::Serialize;
use std::collections::BTreeMap;

/// Bytes in use after one allocation or free.
#[derive(Clone, Debug, Serialize)]
pub struct MemPoint {
    /// Ops executed before this event.
    pub ops_before: usize,
    pub total_bytes: u64,
    pub by_category: BTreeMap<MemCategory, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemorySummary {
    pub peak_bytes: u64,
    /// Ops executed when the peak was reached.
    pub peak_at_op: usize,
    /// What was live at the peak, by category.
    pub at_peak: BTreeMap<MemCategory, u64>,
    /// The largest each category ever reached (not simultaneous).
    pub max_by_category: BTreeMap<MemCategory, u64>,
    /// Still allocated when the record ends (weights, optimizer state, caches, returned
    /// buffers).
    pub at_end: BTreeMap<MemCategory, u64>,
}

pub fn timeline(events: &[MemEvent]) -> Vec<MemPoint> {
    let mut by_category: BTreeMap<MemCategory, i64> = BTreeMap::new();
    let mut total: i64 = 0;
    let mut points = Vec::with_capacity(events.len());
    for ev in events {
        *by_category.entry(ev.category).or_insert(0) += ev.delta_bytes;
        total += ev.delta_bytes;
        debug_assert!(total >= 0, "freed more than was allocated at '{}'", ev.name);
        points.push(MemPoint {
            ops_before: ev.ops_before,
            total_bytes: total.max(0) as u64,
            by_category: by_category
                .iter()
                .map(|(&c, &b)| (c, b.max(0) as u64))
                .collect(),
        });
    }
    points
}

pub fn summarize(events: &[MemEvent]) -> MemorySummary {
    let points = timeline(events);
    let mut peak = MemPoint {
        ops_before: 0,
        total_bytes: 0,
        by_category: BTreeMap::new(),
    };
    let mut max_by_category: BTreeMap<MemCategory, u64> = BTreeMap::new();
    for p in &points {
        if p.total_bytes > peak.total_bytes {
            peak = p.clone();
        }
        for (&c, &b) in &p.by_category {
            let m = max_by_category.entry(c).or_insert(0);
            *m = (*m).max(b);
        }
    }
    let at_end = points
        .last()
        .map(|p| p.by_category.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|&(_, b)| b > 0)
        .collect();
    MemorySummary {
        peak_bytes: peak.total_bytes,
        peak_at_op: peak.ops_before,
        at_peak: peak
            .by_category
            .into_iter()
            .filter(|&(_, b)| b > 0)
            .collect(),
        max_by_category,
        at_end,
    }
}
