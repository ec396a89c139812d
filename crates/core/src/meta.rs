//! The Meta backend: computes nothing, records every op and every allocation and free. Its
//! record *is* the analytic model: the cost module turns it into FLOPs, bytes, roofline times
//! and the memory timeline, for any size of model, without a byte of real storage.

use crate::backend::{Backend, BackendError, OpCall};
use crate::ledger::{Ledger, MemEvent};
use crate::ops::Cost;
use crate::tensor::{Tensor, TensorId, TensorName, TensorSpec};
use std::collections::HashSet;

/// One op as recorded, with its cost already evaluated.
#[derive(Clone, Debug)]
pub struct OpRecord {
    pub call: OpCall,
    pub cost: Cost,
}

pub struct MetaBackend {
    pub ops: Vec<OpRecord>,
    /// Logs every allocation and free: the memory timeline is part of the model.
    pub ledger: Ledger,
    /// Misuse the schedule must never commit: frees of buffers not live, ops on freed buffers.
    /// Tests assert this stays empty.
    pub errors: Vec<String>,
    names: Vec<TensorName>,
    live: HashSet<TensorId>,
    next_id: u32,
}

impl Default for MetaBackend {
    fn default() -> Self {
        MetaBackend {
            ops: Vec::new(),
            ledger: Ledger::with_events(),
            errors: Vec::new(),
            names: Vec::new(),
            live: HashSet::new(),
            next_id: 0,
        }
    }
}

impl MetaBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every allocation and free of the record, in order.
    pub fn mem_events(&self) -> &[MemEvent] {
        self.ledger.events()
    }

    fn name_of(&self, id: TensorId) -> String {
        self.names
            .get(id.0 as usize)
            .map_or_else(|| format!("tensor#{}", id.0), |n| n.to_string())
    }
}

impl Backend for MetaBackend {
    fn name(&self) -> String {
        "meta".to_string()
    }

    fn alloc(&mut self, spec: TensorSpec) -> Result<Tensor, BackendError> {
        let id = TensorId(self.next_id);
        self.next_id += 1;
        let tensor = spec.tensor(id);
        self.ledger.alloc(self.ops.len(), &spec.name, &tensor);
        self.names.push(spec.name);
        self.live.insert(id);
        Ok(tensor)
    }

    fn free(&mut self, tensor: Tensor) {
        if !self.live.remove(&tensor.id) {
            let name = self.name_of(tensor.id);
            self.errors
                .push(format!("free of '{name}', which is not live"));
            return;
        }
        let name = self.name_of(tensor.id);
        self.ledger.free(self.ops.len(), &name, &tensor);
    }

    fn exec(&mut self, call: OpCall) -> Result<(), BackendError> {
        for t in call.inputs.iter().chain(&call.outputs) {
            if !self.live.contains(&t.id) {
                let msg = format!(
                    "op {} ({}) uses '{}', which is not live",
                    call.op.name(),
                    call.label,
                    self.name_of(t.id)
                );
                self.errors.push(msg);
            }
        }
        let cost = call.op.cost(&call.inputs, &call.outputs);
        self.ops.push(OpRecord { call, cost });
        Ok(())
    }

    fn write_f32(&mut self, _tensor: &Tensor, _data: &[f32]) -> Result<(), BackendError> {
        Ok(())
    }

    fn write_i32(&mut self, _tensor: &Tensor, _data: &[i32]) -> Result<(), BackendError> {
        Ok(())
    }

    fn read_f32(&mut self, tensor: &Tensor) -> Result<Vec<f32>, BackendError> {
        Err(BackendError::NoData {
            backend: "meta",
            what: format!(
                "cannot read '{}': nothing was computed",
                self.name_of(tensor.id)
            ),
        })
    }
}
