//! The vector paths of the GEMM kernel (128-bit, what Cranelift 0.135's x64 backend supports):
//! VNNI and SSE differ in how weights are packed and how one group of 4 k is multiplied.
//!
//! Weights are packed at compile time in panels `[N/4][K/4][4 columns][4 k]`, so one 16-byte load
//! gives 4 output columns × 4 values of k. For each row and group of 4 k, the row's 4 activation
//! bytes are broadcast to all lanes and multiplied with the panel by the tree
//! `iadd(iadd_pairwise(iadd_pairwise(swiden_low lo, swiden_high lo), iadd_pairwise(swiden_low hi,
//! swiden_high hi)), acc)`, which the backend emits as one `vpdpbusd` where the CPU has VNNI
//! (each i32 lane accumulates four u8 × i8 products). The SSE path packs each panel as i16 in
//! `[k pair][4 columns][2 k]` order (32 bytes) and widens the row's bytes to i16, so that one
//! `pmaddwd` of a broadcast k pair with half a panel gives 4 columns × 2 k, added straight into
//! the accumulators (weights up to i16 are exact there). Activations are u8; an i8 input is flipped
//! to u8 (`q ^ 0x80`, zero point + 128). The zero-point term `−zp_a·Σ_k w` goes into the bias, so
//! the accumulators start from it. Up to four column vectors (16 columns) are accumulated at
//! once, for two rows at a time (8 accumulators, each panel load serving both rows), and an odd
//! last row on its own; requantization (f32 mode) and the clamp run on vectors, and the result is
//! narrowed to bytes. Rows are read in whole groups of 4 bytes: the row stride is K rounded up
//! to 4.
//!
//! Bounds (the invariant [`crate::kernels::gemm::GemmKernel::run`] relies on): every address the kernel
//! forms is `a + row·stride + 4·g` with `row < m` and `g < ⌈K/4⌉` (or, compiled with
//! [`RowOffsets`], `a + rows[row] + groups[g]`, below their `reach`, which `run_in_place` checks
//! against the halo buffer; 16-byte loads only where 4 groups are contiguous),
//! `out + size·(row·N + col)` with `col < N` (`size` 1, or 4 for i32 output), or inside its own
//! tables (`packed` holds `⌈N/4⌉·⌈K/4⌉` panels, the group table only values `< ⌈K/4⌉`); N, K
//! and the tables are fixed when it is compiled and `run` checks that `a` and `out` hold `m` rows.
//! Partial last vectors store only their valid columns.
//!
//! Weights are compile-time constants, so zeros are known: when some group of 4 k is zero in all
//! 16 columns of a block (block sparsity from `sparsify --block`), the blocks are unrolled and each
//! walks a table of its nonzero groups instead of every group — the skipped multiply-adds are
//! never executed.

use crate::emit::{Epilogue, dot_vnni, emit_if, emit_loop, pmaddwd, small, store_lanes};
use crate::jit::Jit;
use crate::kernels::gemm::{GemmKernel, GemmSpec, Output, Path, RowOffsets, Tables};
use crate::kernels::window::halo::Halo;
use cranelift_codegen::ir::{Endianness, InstBuilder, MemFlagsData, Value, types};
use cranelift_frontend::FunctionBuilder;
use qc_ir::requant::Requant;
use std::sync::Arc;

/// K of at most this many chunks of 4 groups is unrolled.
const UNROLL_CHUNKS: usize = 4;

/// The row stride of activations the vector kernel reads.
pub fn row_stride(k: usize) -> usize {
    k.div_ceil(4) * 4
}

/// The bytes of one 16-byte panel load of `path`: what `w` holds for 4 columns × 4 k.
fn panel_bytes(path: Path) -> usize {
    if path == Path::Vnni { 16 } else { 32 }
}

/// `in_place`: the kernel reads its rows where the offsets say in a halo buffer, taking `(image,
/// out, halo buffer)` and copying the image in first ([`Halo::emit_copy_in`]), M fixed to the
/// offsets' rows; else `(a, out, m)`.
pub(crate) fn compile(
    spec: &GemmSpec,
    path: Path,
    output: Output,
    in_place: Option<(&RowOffsets, &Halo)>,
) -> Result<GemmKernel, String> {
    let offsets = in_place.map(|(o, _)| o);
    let out_size = if output == Output::I32 { 4 } else { 1 };
    let sse = path == Path::Sse;
    let (n, k) = (spec.n, spec.k);
    if n == 0 || k == 0 || spec.weights.len() != n * k || spec.bias.len() != n || spec.requant.len() != n {
        return Err("inconsistent GEMM kernel tables".into());
    }
    let groups = k.div_ceil(4);
    let nv = n.div_ceil(4);
    if let Some(o) = offsets {
        if o.groups.len() != groups || o.rows.is_empty() || o.rows.len() % 2 != 0 || o.reach() > 1 << 40 {
            return Err(format!("row offsets of {} rows and {} groups for K = {k}", o.rows.len(), o.groups.len()));
        }
    }
    // Whether each run of 4 groups that a dense block reads with one 16-byte load is contiguous.
    let contiguous = offsets.is_none_or(|o| o.groups.chunks_exact(4).all(|c| (0..4).all(|i| c[i] == c[0] + 4 * i)));
    let pb = panel_bytes(path);
    let mut packed = vec![0u8; nv * groups * pb];
    for c in 0..n {
        for kk in 0..k {
            let w = spec.weights[c * k + kk];
            let panel = ((c / 4) * groups + kk / 4) * pb;
            if sse {
                // [k pair][column][2 k] as i16: one pmaddwd gives 4 columns × 2 k.
                let w = i16::try_from(w).map_err(|_| format!("weight {w} does not fit i16; use the scalar path"))?;
                let at = panel + 2 * ((kk % 4 / 2) * 8 + (c % 4) * 2 + kk % 2);
                packed[at..at + 2].copy_from_slice(&w.to_le_bytes());
            } else {
                let w = i8::try_from(w).map_err(|_| format!("weight {w} does not fit i8; use the scalar path"))?;
                packed[panel + (c % 4) * 4 + kk % 4] = w as u8;
            }
        }
    }
    let zp_u = spec.zp_a + if spec.a_signed { 128 } else { 0 };
    let mut bias = vec![0i32; nv * 4];
    let mut mult = vec![0f32; nv * 4];
    for c in 0..n {
        let wsum: i64 = spec.weights[c * k..(c + 1) * k].iter().map(|&w| w as i64).sum();
        bias[c] = (spec.bias[c] as i64 - zp_u as i64 * wsum) as i32;
        mult[c] = match spec.requant[c] {
            Requant::F32(m) if m.is_finite() => m,
            _ => return Err("the vector path requantizes in f32 mode with finite multipliers".into()),
        };
    }
    // The nonzero groups of each block of 16 columns (4 vectors): `starts[blk]..starts[blk + 1]`.
    let blocks = nv.div_ceil(4);
    let mut nonzero: Vec<i64> = Vec::new();
    let mut starts = vec![0usize];
    for blk in 0..blocks {
        for g in 0..groups {
            let used = (blk * 4..(blk * 4 + 4).min(nv))
                .any(|v| packed[(v * groups + g) * pb..(v * groups + g + 1) * pb].iter().any(|&w| w != 0));
            if used {
                nonzero.push(g as i64);
            }
        }
        starts.push(nonzero.len());
    }
    let sparse = nonzero.len() < blocks * groups;
    let tables = Box::new(Tables {
        weights: Box::new([]),
        bias: bias.into_boxed_slice(),
        mult: mult.into_boxed_slice(),
        m0: Box::new([]),
        round: Box::new([]),
        shift: Box::new([]),
        packed: packed.into_boxed_slice(),
        groups: if sparse { nonzero.into_boxed_slice() } else { Box::new([]) },
        row_offsets: offsets.map_or_else(Default::default, |o| o.rows.iter().map(|&r| r as i64).collect()),
        group_offsets: offsets.map_or_else(Default::default, |o| o.groups.iter().map(|&g| g as i64).collect()),
    });
    let (bt, mt, pt) = (tables.bias.as_ptr() as i64, tables.mult.as_ptr() as i64, tables.packed.as_ptr() as i64);
    let small_mults = small(&tables.mult);
    let gt = tables.groups.as_ptr() as i64;
    let (rt, got) = (tables.row_offsets.as_ptr() as i64, tables.group_offsets.as_ptr() as i64);
    let reads_in_place = offsets.is_some();
    let (lda, signed_in) = (row_stride(k) as i64, spec.a_signed);
    let (zp_y, lo, hi) = (spec.zp_y, spec.lo, spec.hi);
    let mut jit = Jit::new()?;
    let ptr = jit.pointer_type();
    let params = if in_place.is_some() { [ptr, ptr, ptr] } else { [ptr, ptr, types::I64] };
    let id = jit.define(&params, |b, args| {
        let (a, out, m) = match in_place {
            Some((offsets, halo)) => {
                halo.emit_copy_in(b, args[0], args[2]);
                (args[2], args[1], b.ins().iconst(types::I64, offsets.rows.len() as i64))
            }
            None => (args[0], args[1], args[2]),
        };
        let flags = MemFlagsData::trusted();
        let raw = MemFlagsData::new().with_notrap();
        let little = MemFlagsData::new().with_endianness(Endianness::Little);
        let zero = b.ins().iconst(types::I64, 0);
        // Rows in pairs or fours (each panel load serves them all), then an odd last row alone
        // (in place, M is even). Blocks of columns outside, rows inside: a block's weight panels
        // stay in L1 while the rows stream past them.
        let pairs = b.ins().sshr_imm_s(m, 1);
        // `rows` rows from `row0` (a value) of one block.
        let tile = |b: &mut FunctionBuilder,
                    row0: Value,
                    rows: usize,
                    first: Value,
                    vecs: usize,
                    last_cols: usize,
                    walk: Option<(usize, usize)>| {
            {
                // The addresses of the pair's rows in `base`, `stride` bytes apart.
                let row_addrs = |b: &mut FunctionBuilder, base: Value, stride: i64| -> Vec<Value> {
                    (0..rows)
                        .map(|r| {
                            let i = b.ins().iadd_imm_s(row0, r as i64);
                            let off = b.ins().imul_imm_s(i, stride);
                            b.ins().iadd(base, off)
                        })
                        .collect()
                };
                let a_rows = if reads_in_place {
                    // Row r at `a + rows[r]`.
                    row_addrs(b, zero, 8)
                        .into_iter()
                        .map(|at| {
                            let at = b.ins().iadd_imm_s(at, rt);
                            let off = b.ins().load(types::I64, raw, at, 0);
                            b.ins().iadd(a, off)
                        })
                        .collect()
                } else {
                    row_addrs(b, a, lda)
                };
                let o_rows = row_addrs(b, out, (n * out_size) as i64);
                let accs: Vec<Vec<_>> = (0..rows).map(|_| (0..vecs).map(|_| b.declare_var(types::I32X4)).collect()).collect();
                for v in 0..vecs {
                    let off = b.ins().imul_imm_s(first, 16);
                    let addr = b.ins().iadd_imm_s(off, bt + 16 * v as i64);
                    let init = b.ins().load(types::I32X4, raw, addr, 0);
                    for row in &accs {
                        b.def_var(row[v], init);
                    }
                }
                // Panel (first + v, g) starts at pt + ((first + v) * groups + g) * pb.
                let panel_bases: Vec<Value> = (0..vecs)
                    .map(|v| {
                        let fv = b.ins().iadd_imm_s(first, v as i64);
                        let row = b.ins().imul_imm_s(fv, (pb * groups) as i64);
                        b.ins().iadd_imm_s(row, pt)
                    })
                    .collect();
                // Dense blocks take 4 groups (16 bytes of each row) per iteration: one 16-byte
                // load per row, each 4-byte group broadcast by a shuffle, panel loads at
                // immediate offsets. The groups past the last multiple of 4 (and sparse blocks'
                // table walks) take one group per iteration.
                // `avs[row]`: the row's 4 bytes of one group, broadcast as the dot product reads
                // them (VNNI: one vector; SSE: the k pairs 0–1 and 2–3 as i16, each broadcast).
                // The panel addresses of group `g` for each column vector.
                let panels = |b: &mut FunctionBuilder, g: Value| -> Vec<Value> {
                    let gp = b.ins().imul_imm_s(g, pb as i64);
                    panel_bases.iter().map(|&base| b.ins().iadd(base, gp)).collect()
                };
                let accumulate = |b: &mut FunctionBuilder, w_addrs: &[Value], avs: &[[Value; 2]], j: usize| {
                    for (v, &w_addr) in w_addrs.iter().enumerate() {
                        let off = (pb * j) as i32;
                        let w = if sse {
                            [b.ins().load(types::I16X8, flags, w_addr, off), b.ins().load(types::I16X8, flags, w_addr, off + 16)]
                        } else {
                            let w = b.ins().load(types::I8X16, flags, w_addr, off);
                            [w, w]
                        };
                        for (r, row) in accs.iter().enumerate() {
                            let acc = b.use_var(row[v]);
                            let acc = if sse {
                                let m01 = pmaddwd(b, avs[r][0], w[0]);
                                let m23 = pmaddwd(b, avs[r][1], w[1]);
                                let acc = b.ins().iadd(acc, m01);
                                b.ins().iadd(acc, m23)
                            } else {
                                dot_vnni(b, acc, w[0], avs[r][0])
                            };
                            b.def_var(row[v], acc);
                        }
                    }
                };
                // 32-bit lane `lane` of `v` (as bytes) in every lane.
                let lane = |b: &mut FunctionBuilder, v: Value, lane: u8| {
                    let mask: Vec<u8> = (0..16).map(|i| 4 * lane + i % 4).collect();
                    let mask = b.func.dfg.immediates.push(mask.as_slice().into());
                    b.ins().shuffle(v, v, mask)
                };
                // The SSE operands of one group from `x`, i16 values whose 32-bit lanes `l`, `l + 1`
                // hold its k pairs.
                let pairs = |b: &mut FunctionBuilder, x: Value, l: u8| -> [Value; 2] {
                    let bytes = b.ins().bitcast(types::I8X16, little, x);
                    [lane(b, bytes, l), lane(b, bytes, l + 1)].map(|p| b.ins().bitcast(types::I16X8, little, p))
                };
                let flip = |b: &mut FunctionBuilder, av: Value| {
                    if signed_in {
                        let flip = b.ins().iconst(types::I8, -128);
                        let flip = b.ins().splat(types::I8X16, flip);
                        b.ins().bxor(av, flip)
                    } else {
                        av
                    }
                };
                let (from, to) = walk.unwrap_or((0, groups));
                // Where group `g` lies in a row: 4·g, or where the row offsets say.
                let group_offset = |b: &mut FunctionBuilder, g: Value| {
                    if reads_in_place {
                        let at = b.ins().imul_imm_s(g, 8);
                        let at = b.ins().iadd_imm_s(at, got);
                        b.ins().load(types::I64, raw, at, 0)
                    } else {
                        b.ins().imul_imm_s(g, 4)
                    }
                };
                let chunks = if walk.is_none() && contiguous { groups / 4 } else { 0 };
                // Four groups from 16 bytes at `a16` into each row.
                let four_groups = |b: &mut FunctionBuilder, g: Value, a16: Value| {
                    let rows16: Vec<Value> = a_rows
                        .iter()
                        .map(|&a_row| {
                            let a_addr = b.ins().iadd(a_row, a16);
                            let av = b.ins().load(types::I8X16, raw, a_addr, 0);
                            flip(b, av)
                        })
                        .collect();
                    let wide: Vec<[Value; 2]> = rows16
                        .iter()
                        .map(|&av| if sse { [b.ins().uwiden_low(av), b.ins().uwiden_high(av)] } else { [av, av] })
                        .collect();
                    let w_addrs = panels(b, g);
                    for j in 0..4u8 {
                        let avs: Vec<[Value; 2]> = wide
                            .iter()
                            .map(|w| if sse { pairs(b, w[usize::from(j / 2)], 2 * (j % 2)) } else { [lane(b, w[0], j); 2] })
                            .collect();
                        accumulate(b, &w_addrs, &avs, j as usize);
                    }
                };
                if chunks > 0 && chunks <= UNROLL_CHUNKS {
                    // A short K: its chunks unrolled, their offsets immediates.
                    for ch in 0..chunks {
                        let g = b.ins().iconst(types::I64, 4 * ch as i64);
                        let a16 = b.ins().iconst(types::I64, offsets.map_or(16 * ch, |o| o.groups[4 * ch]) as i64);
                        four_groups(b, g, a16);
                    }
                } else if chunks > 0 {
                    let c_end = b.ins().iconst(types::I64, chunks as i64);
                    emit_loop(b, zero, c_end, |b, ch| {
                        let g = b.ins().imul_imm_s(ch, 4);
                        let a16 = group_offset(b, g);
                        four_groups(b, g, a16);
                    });
                }
                // One group `g` whose bytes lie `g4` into each row.
                let one_group = |b: &mut FunctionBuilder, g: Value, g4: Value| {
                    let avs: Vec<[Value; 2]> = a_rows
                        .iter()
                        .map(|&a_row| {
                            let a_addr = b.ins().iadd(a_row, g4);
                            let a4 = b.ins().load(types::I32, raw, a_addr, 0);
                            let splat = b.ins().splat(types::I32X4, a4);
                            let av = b.ins().bitcast(types::I8X16, little, splat);
                            let av = flip(b, av);
                            if sse {
                                let wide = b.ins().uwiden_low(av);
                                pairs(b, wide, 0)
                            } else {
                                [av, av]
                            }
                        })
                        .collect();
                    let w_addrs = panels(b, g);
                    accumulate(b, &w_addrs, &avs, 0);
                };
                let start = from + 4 * chunks;
                if walk.is_none() && to - start <= 4 {
                    // A few groups left over (all of a short K): unrolled, their offsets immediates.
                    for gi in start..to {
                        let g = b.ins().iconst(types::I64, gi as i64);
                        let g4 = b.ins().iconst(types::I64, offsets.map_or(4 * gi, |o| o.groups[gi]) as i64);
                        one_group(b, g, g4);
                    }
                } else {
                    let (g_start, g_end) = (b.ins().iconst(types::I64, start as i64), b.ins().iconst(types::I64, to as i64));
                    emit_loop(b, g_start, g_end, |b, t| {
                        let g = if walk.is_some() {
                            let off = b.ins().imul_imm_s(t, 8);
                            let addr = b.ins().iadd_imm_s(off, gt);
                            b.ins().load(types::I64, raw, addr, 0)
                        } else {
                            t
                        };
                        let g4 = group_offset(b, g);
                        one_group(b, g, g4);
                    });
                }
                if output == Output::I32 {
                    // The accumulators themselves; a partial last vector lane by lane.
                    for (r, row) in accs.iter().enumerate() {
                        for (v, &var) in row.iter().enumerate() {
                            let acc = b.use_var(var);
                            let col = b.ins().imul_imm_s(first, 16);
                            let col = b.ins().iadd_imm_s(col, 16 * v as i64);
                            let o_addr = b.ins().iadd(o_rows[r], col);
                            match if v + 1 == vecs { last_cols } else { 4 } {
                                4 => {
                                    b.ins().store(raw, acc, o_addr, 0);
                                }
                                cols => {
                                    for t in 0..cols {
                                        let lane = b.ins().extractlane(acc, t as u8);
                                        b.ins().store(raw, lane, o_addr, 4 * t as i32);
                                    }
                                }
                            }
                        }
                    }
                    return;
                }
                // Requantize ([`Epilogue`]), constants once per block; each row's columns of the
                // block narrowed together and stored at once.
                let clamp = Epilogue::new(b, zp_y, lo, hi, small_mults);
                let off = b.ins().imul_imm_s(first, 16);
                let mults: Vec<Value> = (0..vecs)
                    .map(|v| {
                        let m_addr = b.ins().iadd_imm_s(off, mt + 16 * v as i64);
                        b.ins().load(types::F32X4, raw, m_addr, 0)
                    })
                    .collect();
                let col = b.ins().imul_imm_s(first, 4);
                let cols = 4 * (vecs - 1) + last_cols;
                for (r, row) in accs.iter().enumerate() {
                    let q: Vec<Value> = row
                        .iter()
                        .zip(&mults)
                        .map(|(&var, &mv)| {
                            let acc = b.use_var(var);
                            clamp.apply(b, acc, mv)
                        })
                        .collect();
                    let q = match q.len() {
                        1 => vec![q[0], q[0]],
                        3 => vec![q[0], q[1], q[2], q[2]],
                        _ => q,
                    };
                    let bytes = clamp.bytes(b, &q);
                    let o_addr = b.ins().iadd(o_rows[r], col);
                    store_lanes(b, bytes, o_addr, cols);
                }
            }
        };
        // One block: `vecs` column vectors starting at vector `first`, for every row; `walk` is
        // the range of the group table to visit (all groups when `None`). Blocks of one or two
        // vectors take rows four at a time (then a pair when two or three rows are left), so
        // that each tile still has 8 accumulators; wider blocks take them in pairs.
        let block = |b: &mut FunctionBuilder, first: Value, vecs: usize, last_cols: usize, walk: Option<(usize, usize)>| {
            if vecs <= 2 {
                let quads = b.ins().sshr_imm_s(m, 2);
                emit_loop(b, zero, quads, |b, q| {
                    let row0 = b.ins().imul_imm_s(q, 4);
                    tile(b, row0, 4, first, vecs, last_cols, walk);
                });
                let pair = b.ins().band_imm_s(m, 2);
                emit_if(b, pair, |b| {
                    let row0 = b.ins().band_imm_s(m, -4);
                    tile(b, row0, 2, first, vecs, last_cols, walk);
                });
            } else {
                emit_loop(b, zero, pairs, |b, p| {
                    let row0 = b.ins().imul_imm_s(p, 2);
                    tile(b, row0, 2, first, vecs, last_cols, walk);
                });
            }
            if in_place.is_none() {
                let odd = b.ins().band_imm_s(m, 1);
                emit_if(b, odd, |b| {
                    let row0 = b.ins().iadd_imm_s(m, -1);
                    tile(b, row0, 1, first, vecs, last_cols, walk);
                });
            }
        };
        // Whole blocks of 16 columns in a loop, then the rest in one block whose last
        // vector may be partial (then only its columns are stored).
        // Sparse weights unroll the blocks, each with its own group table.
        let complete = n / 4;
        let full = complete / 4;
        let walk = |blk: usize| sparse.then(|| (starts[blk], starts[blk + 1]));
        if full > 0 && sparse {
            for blk in 0..full {
                let first = b.ins().iconst(types::I64, (blk * 4) as i64);
                block(b, first, 4, 4, walk(blk));
            }
        } else if full > 0 {
            let end = b.ins().iconst(types::I64, full as i64);
            let zero = b.ins().iconst(types::I64, 0);
            emit_loop(b, zero, end, |b, blk| {
                let first = b.ins().imul_imm_s(blk, 4);
                block(b, first, 4, 4, None);
            });
        }
        let rest = complete % 4 + usize::from(n % 4 != 0);
        if rest > 0 {
            let first = b.ins().iconst(types::I64, (full * 4) as i64);
            let last_cols = if n % 4 != 0 { n % 4 } else { 4 };
            block(b, first, rest, last_cols, walk(full));
        }
        b.ins().return_(&[]);
    })?;
    let code = Arc::new(jit.finish()?);
    GemmKernel::from_parts(id, (n, k), path, output, tables, code, in_place.map(|(_, h)| h.image()))
}
