//! The block manager: which of the paged cache's blocks are free. A sequence of n positions
//! holds ⌈n / block_size⌉ blocks, in order (its block table); they return to the pool the step
//! the sequence finishes, is cancelled or is preempted.

/// Blocks needed for `positions` positions.
pub fn blocks_for(positions: usize, block_size: usize) -> usize {
    positions.div_ceil(block_size)
}

#[derive(Debug)]
pub struct BlockManager {
    total: usize,
    /// A stack: the block freed last is handed out first (still warm in a cache).
    free: Vec<usize>,
}

impl BlockManager {
    pub fn new(total: usize) -> Self {
        BlockManager {
            total,
            free: (0..total).rev().collect(),
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    pub fn used(&self) -> usize {
        self.total - self.free.len()
    }

    /// Grows `table` to `n` blocks; false (and `table` unchanged) when too few are free.
    pub fn grow(&mut self, table: &mut Vec<usize>, n: usize) -> bool {
        let more = n.saturating_sub(table.len());
        if more > self.free.len() {
            return false;
        }
        let at = self.free.len() - more;
        table.extend(self.free.drain(at..).rev());
        true
    }

    pub fn release(&mut self, table: &mut Vec<usize>) {
        self.free.extend(table.drain(..).rev());
        debug_assert!(self.free.len() <= self.total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_releases_and_refuses_past_the_pool() {
        let mut m = BlockManager::new(4);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert!(m.grow(&mut a, 3));
        assert_eq!(a, vec![0, 1, 2]);
        assert!(!m.grow(&mut b, 2));
        assert!(b.is_empty());
        assert!(m.grow(&mut b, 1));
        assert_eq!(m.used(), 4);
        m.release(&mut a);
        assert_eq!(m.used(), 1);
        assert!(m.grow(&mut b, 4));
        assert_eq!(m.free_count(), 0);
        m.release(&mut b);
        assert_eq!(m.used(), 0);
        assert_eq!(blocks_for(0, 16), 0);
        assert_eq!(blocks_for(16, 16), 1);
        assert_eq!(blocks_for(17, 16), 2);
    }
}
