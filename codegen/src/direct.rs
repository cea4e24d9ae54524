//! Direct calls: a batch-1 run calls the steps whose kernel is one JIT function on the arena
//! straight from a list made when the model is compiled — the function and its addresses in the
//! arena, checked once then — instead of going through `Run::exec`'s dispatch, the arena's
//! slicing and each kernel's checks of its slices. At batch 1 these took more time than several
//! of the kernels themselves. Residual adds (Rust) are called the same way, on slices of the
//! arena fixed at compile time. The other steps (quantizing the input, dequantizing the output,
//! kernels with a Rust part) run through `Run::exec` as in any run.
//!
//! Bounds: a call is made only when its kernel's input and output are exactly the bytes of its
//! activations at batch 1, which lie in the arena's first `plan.size` bytes and do not overlap,
//! and its buffer lies in the arena's part after them; an add's operands and result are as many
//! bytes each, in the arena's first part, its result apart from both ([`calls`] checks each);
//! `CompiledModel::run` makes direct calls only at batch 1, on an arena of at least
//! [`Calls::arena`] bytes, and writes each buffer's border before the first call when the buffers
//! are fresh.

use std::ops::Range;

/// A kernel's JIT function, for a direct call.
#[derive(Clone, Copy)]
pub(crate) enum DirectFn {
    /// `(image, out, buffer)` on one image, which the kernel copies into its `buffer`-byte
    /// buffer, whose border must be `pad`.
    Window { f: crate::jit::BufferFn, pad: u8, buffer: usize },
    /// `(a, out, m)`.
    Rows { f: crate::jit::RowsFn, m: i64 },
}

/// A kernel that a batch-1 step can call directly: its function and the bytes it reads and
/// writes (at batch 1).
pub(crate) struct Direct {
    pub(crate) f: DirectFn,
    pub(crate) input: usize,
    pub(crate) output: usize,
}

/// One step of a batch-1 run.
pub(crate) enum Call {
    /// A kernel with the arena offsets of its input, output and buffer.
    Kernel(DirectFn, [usize; 3]),
    /// The add of step `i`, with the arena offsets of its operands and result and their length.
    Add(usize, [usize; 3], usize),
    /// Step `i`, run by `Run::exec`.
    Exec(usize),
}

/// The steps of a batch-1 run.
pub(crate) struct Calls {
    pub(crate) calls: Vec<Call>,
    /// The bytes the arena must have.
    pub(crate) arena: usize,
}

/// What [`calls`] knows of one step: a directly called kernel with its input's and output's byte
/// ranges in the arena at batch 1 and its buffer's range after the activations; or an add's
/// operands and result; or neither.
pub(crate) enum StepView {
    Kernel { direct: Direct, input: Range<usize>, output: Range<usize>, buffer: Range<usize> },
    Add { a: Range<usize>, b: Range<usize>, y: Range<usize> },
    Other,
}

/// The calls of a batch-1 run over an arena of `activations` bytes followed (from the next
/// multiple of 64) by `buffers` bytes of kernel buffers; `None` when every step runs through
/// `Run::exec`. A step whose kernel does not match its activations or buffer exactly runs
/// through `Run::exec`.
pub(crate) fn calls(steps: impl Iterator<Item = StepView>, activations: usize, buffers: usize) -> Option<Calls> {
    let at = activations.next_multiple_of(64);
    let disjoint = |a: &Range<usize>, b: &Range<usize>| a.end <= b.start || b.end <= a.start;
    let calls: Vec<Call> = steps
        .enumerate()
        .map(|(i, s)| match s {
            StepView::Kernel { direct: d, input, output, buffer } => {
                let fits = input.len() == d.input
                    && output.len() == d.output
                    && input.end <= activations
                    && output.end <= activations
                    && disjoint(&input, &output)
                    && buffer.end <= buffers
                    && match d.f {
                        DirectFn::Window { buffer: len, .. } => buffer.len() >= len,
                        DirectFn::Rows { .. } => true,
                    };
                if fits { Call::Kernel(d.f, [input.start, output.start, at + buffer.start]) } else { Call::Exec(i) }
            }
            StepView::Add { a, b, y } => {
                let fits = a.len() == y.len()
                    && b.len() == y.len()
                    && [&a, &b, &y].iter().all(|r| r.end <= activations)
                    && disjoint(&a, &y)
                    && disjoint(&b, &y);
                if fits { Call::Add(i, [a.start, b.start, y.start], y.len()) } else { Call::Exec(i) }
            }
            StepView::Other => Call::Exec(i),
        })
        .collect();
    calls.iter().any(|c| !matches!(c, Call::Exec(_))).then_some(Calls { calls, arena: at + buffers })
}

impl Calls {
    /// Writes the border of every directly called kernel's buffer in `arena`.
    pub(crate) fn pad_buffers(&self, arena: &mut [u8]) {
        for call in &self.calls {
            if let Call::Kernel(DirectFn::Window { pad, buffer, .. }, [_, _, at]) = *call
                && let Some(bytes) = arena.get_mut(at..at + buffer)
            {
                bytes.fill(pad);
            }
        }
    }
}
