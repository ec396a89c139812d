//! Collectives across W devices, costed as the ring algorithm NCCL uses for large messages.
//! For a buffer of S bytes, each device sends (and receives):
//!   all-reduce      2(W−1)/W · S   (a reduce-scatter then an all-gather)
//!   reduce-scatter   (W−1)/W · S
//!   all-gather       (W−1)/W · S
//! FLOPs: the reductions add (W−1)/W of the elements on each device; an all-gather adds none.
//! The op's `bytes` are these link bytes, so its roofline time is link bytes over the link's
//! bandwidth (see cost::roofline).

use crate::comm::Reduce;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectiveKind {
    AllReduce,
    ReduceScatter,
    AllGather,
}

impl CollectiveKind {
    pub const fn name(self) -> &'static str {
        match self {
            CollectiveKind::AllReduce => "all_reduce",
            CollectiveKind::ReduceScatter => "reduce_scatter",
            CollectiveKind::AllGather => "all_gather",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Collective {
    pub kind: CollectiveKind,
    /// How an all-reduce or reduce-scatter combines the ranks' values (an all-gather combines
    /// none): DDP averages gradients, ZeRO-1's norm sums squares.
    pub reduce: Reduce,
    pub numel: u64,
    pub width_bytes: u64,
    pub world: usize,
}

impl Collective {
    fn fraction(&self) -> (u64, u64) {
        let w = self.world.max(1) as u64;
        (w - 1, w)
    }

    pub fn link_bytes(&self) -> u64 {
        let (num, den) = self.fraction();
        let s = self.numel * self.width_bytes;
        let one_way = s * num / den;
        match self.kind {
            CollectiveKind::AllReduce => 2 * one_way,
            CollectiveKind::ReduceScatter | CollectiveKind::AllGather => one_way,
        }
    }

    pub fn flops(&self) -> u64 {
        let (num, den) = self.fraction();
        match self.kind {
            CollectiveKind::AllReduce | CollectiveKind::ReduceScatter => self.numel * num / den,
            CollectiveKind::AllGather => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_all_reduce_moves_twice_the_fraction() {
        let c = Collective {
            kind: CollectiveKind::AllReduce,
            reduce: Reduce::Mean,
            numel: 1000,
            width_bytes: 4,
            world: 4,
        };
        assert_eq!(c.link_bytes(), 2 * 4000 * 3 / 4);
        let one = Collective { world: 1, ..c };
        assert_eq!(one.link_bytes(), 0, "one device communicates nothing");
    }
}
