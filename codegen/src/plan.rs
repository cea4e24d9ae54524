//! The memory plan: every 8-bit activation a run computes lives in one arena, at an offset chosen
//! when the model is compiled from the buffers' lifetimes, so that a run allocates nothing per op
//! and buffers whose lifetimes do not overlap share memory.
//!
//! Sizes are per image (an activation's bytes scale with the batch, which is its leading dim), so
//! one plan serves every batch: at batch `B` a buffer lives at `B · offset`, and buffers that do
//! not overlap per image do not overlap at any batch. Offsets are chosen greedily, largest buffer
//! first, at the lowest offset that no placed buffer alive at the same time covers (the usual
//! heuristic of tensor allocators). The lower bound any plan must reach is the largest total size
//! of the buffers alive at one step.

/// A buffer to place: bytes per image, alive from step `first` to step `last` (inclusive).
#[derive(Clone, Copy, Debug)]
pub struct Buffer {
    /// Bytes per image.
    pub bytes: usize,
    /// The step that writes it.
    pub first: usize,
    /// The last step that reads it.
    pub last: usize,
}

/// Where each buffer lives.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Per buffer, its offset per image (a multiple of [`ALIGN`]).
    pub offsets: Vec<usize>,
    /// The arena's bytes per image.
    pub size: usize,
    /// The largest total of buffers alive at once, per image: no plan needs less.
    pub lower_bound: usize,
}

/// Buffers start at multiples of this many bytes per image.
pub const ALIGN: usize = 16;

fn aligned(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Places `buffers`.
pub fn plan(buffers: &[Buffer]) -> Plan {
    let overlap = |a: &Buffer, b: &Buffer| a.first <= b.last && b.first <= a.last;
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by(|&a, &b| buffers[b].bytes.cmp(&buffers[a].bytes).then(buffers[a].first.cmp(&buffers[b].first)));
    let mut offsets = vec![0; buffers.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut size = 0;
    for i in order {
        let b = &buffers[i];
        // The ranges taken by placed buffers alive at the same time, by start.
        let mut taken: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| overlap(b, &buffers[j]))
            .map(|&j| (offsets[j], offsets[j] + aligned(buffers[j].bytes)))
            .collect();
        taken.sort_unstable();
        let mut at = 0;
        for (start, end) in taken {
            if start >= at + aligned(b.bytes) {
                break;
            }
            at = at.max(end);
        }
        offsets[i] = at;
        size = size.max(at + aligned(b.bytes));
        placed.push(i);
    }
    let steps = buffers.iter().map(|b| b.last + 1).max().unwrap_or(0);
    let lower_bound = (0..steps)
        .map(|t| buffers.iter().filter(|b| b.first <= t && t <= b.last).map(|b| aligned(b.bytes)).sum::<usize>())
        .max()
        .unwrap_or(0);
    Plan { offsets, size, lower_bound }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_live_overlap(buffers: &[Buffer], p: &Plan) {
        for (i, a) in buffers.iter().enumerate() {
            for (j, b) in buffers.iter().enumerate().skip(i + 1) {
                if a.first <= b.last && b.first <= a.last {
                    let (ra, rb) = (p.offsets[i]..p.offsets[i] + a.bytes, p.offsets[j]..p.offsets[j] + b.bytes);
                    assert!(ra.end <= rb.start || rb.end <= ra.start, "buffers {i} and {j} overlap: {ra:?} {rb:?}");
                }
            }
            assert!(p.offsets[i] + a.bytes <= p.size && p.offsets[i] % ALIGN == 0);
        }
        assert!(p.size >= p.lower_bound);
    }

    #[test]
    fn a_chain_reuses_memory() {
        // x → a → b → c: two buffers alive at a time.
        let buffers = [
            Buffer { bytes: 64, first: 0, last: 1 },
            Buffer { bytes: 64, first: 1, last: 2 },
            Buffer { bytes: 64, first: 2, last: 3 },
        ];
        let p = plan(&buffers);
        no_live_overlap(&buffers, &p);
        assert_eq!((p.size, p.lower_bound), (128, 128));
    }

    #[test]
    fn residual_and_random_lifetimes_never_overlap() {
        let mut seed = 7u64;
        let mut next = |n: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for _ in 0..200 {
            let buffers: Vec<Buffer> = (0..next(20) + 1)
                .map(|_| {
                    let first = next(30);
                    Buffer { bytes: next(5000) + 1, first, last: first + next(10) }
                })
                .collect();
            let p = plan(&buffers);
            no_live_overlap(&buffers, &p);
            // Greedy placement stays within twice the bound on these.
            assert!(p.size <= 2 * p.lower_bound, "{} vs {}", p.size, p.lower_bound);
        }
    }
}
