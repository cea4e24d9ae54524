//! What the passes share and are not passes themselves: graph rewriting helpers (`rewrite`),
//! calibration observers ([`observer`]), sample batches ([`samples`]), how channels flow
//! between layers ([`channel_flow`]) and which to keep (`channel_selection`), and the small
//! training framework behind recovery after compression — reverse-mode gradients over QIR
//! (`backprop`), least-squares reconstruction ([`reconstruct`]) and distillation from the
//! uncompressed model ([`distill`]).

pub(crate) mod backprop;
pub mod channel_flow;
pub(crate) mod channel_selection;
pub mod distill;
pub mod observer;
pub mod reconstruct;
pub(crate) mod rewrite;
pub mod samples;
