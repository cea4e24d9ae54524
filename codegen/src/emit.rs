//! Cranelift emission helpers the kernels share: loops and branches, the dot products
//! (`vpdpbusd`'s tree, `pmaddwd`), the requantization epilogue and byte stores of partial
//! vectors. Kernels build on these; none of them knows a layer.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{Endianness, InstBuilder, MemFlagsData, Value, types};
use cranelift_frontend::FunctionBuilder;

/// Emits `for var in start..end { body }`.
pub(crate) fn emit_loop(b: &mut FunctionBuilder, start: Value, end: Value, mut body: impl FnMut(&mut FunctionBuilder, Value)) {
    let var = b.declare_var(types::I64);
    b.def_var(var, start);
    let (header, block, exit) = (b.create_block(), b.create_block(), b.create_block());
    b.ins().jump(header, &[]);
    b.switch_to_block(header);
    let i = b.use_var(var);
    let more = b.ins().icmp(IntCC::SignedLessThan, i, end);
    b.ins().brif(more, block, &[], exit, &[]);
    b.switch_to_block(block);
    b.seal_block(block);
    body(b, i);
    let next = b.ins().iadd_imm_s(i, 1);
    b.def_var(var, next);
    b.ins().jump(header, &[]);
    b.seal_block(header);
    b.switch_to_block(exit);
    b.seal_block(exit);
}

/// Emits `if cond != 0 { body }`.
pub(crate) fn emit_if(b: &mut FunctionBuilder, cond: Value, body: impl FnOnce(&mut FunctionBuilder)) {
    let (then, exit) = (b.create_block(), b.create_block());
    b.ins().brif(cond, then, &[], exit, &[]);
    b.switch_to_block(then);
    b.seal_block(then);
    body(b);
    b.ins().jump(exit, &[]);
    b.switch_to_block(exit);
    b.seal_block(exit);
}

/// u8 (as i8x16 bits) · i8 weights, four products summed into each i32 lane, plus `acc`: the tree
/// the x64 backend emits as one `vpdpbusd` where the CPU has VNNI.
pub(crate) fn dot_vnni(b: &mut FunctionBuilder, acc: Value, w: Value, a: Value) -> Value {
    let (sl, ul) = (b.ins().swiden_low(w), b.ins().uwiden_low(a));
    let lo = b.ins().imul(sl, ul);
    let (sh, uh) = (b.ins().swiden_high(w), b.ins().uwiden_high(a));
    let hi = b.ins().imul(sh, uh);
    let (lo_l, lo_h) = (b.ins().swiden_low(lo), b.ins().swiden_high(lo));
    let p_lo = b.ins().iadd_pairwise(lo_l, lo_h);
    let (hi_l, hi_h) = (b.ins().swiden_low(hi), b.ins().swiden_high(hi));
    let p_hi = b.ins().iadd_pairwise(hi_l, hi_h);
    let t = b.ins().iadd_pairwise(p_lo, p_hi);
    b.ins().iadd(t, acc)
}

/// `pmaddwd`: eight i16 products summed in adjacent pairs into four i32 lanes, written as the
/// tree the x64 backend lowers to that one instruction.
pub(crate) fn pmaddwd(b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
    let (xl, yl) = (b.ins().swiden_low(x), b.ins().swiden_low(y));
    let lo = b.ins().imul(xl, yl);
    let (xh, yh) = (b.ins().swiden_high(x), b.ins().swiden_high(y));
    let hi = b.ins().imul(xh, yh);
    b.ins().iadd_pairwise(lo, hi)
}

/// The requantization of i32x4 accumulators with f32x4 multipliers: `rne(acc · m)`, converted
/// (exact: a small integer), plus the zero point, clamped to `[lo, hi]` and narrowed to bytes.
/// Where every multiplier is below 1/2 in magnitude, `|acc · m| < 2^30`, so the conversion and
/// the addition cannot overflow and the clamp is the narrowing's saturation to the storage range
/// (`packssdw`, then `packuswb`/`packsswb`), then a byte max/min where `[lo, hi]` is narrower;
/// otherwise the value is clamped to `[lo − zp, hi − zp]` in f32 before the conversion (no NaN
/// arises, the multipliers being finite). Its constants are made once, where it is created.
pub(crate) struct Epilogue {
    lo: Value,
    hi: Value,
    zp: Value,
    unsigned_out: bool,
    /// Clamped by saturation: `Some`, with the byte bounds where `[lo, hi]` is narrower than the
    /// storage range.
    saturating: Option<Option<(Value, Value)>>,
}

impl Epilogue {
    /// `small_multipliers`: every multiplier is finite and below 1/2 in magnitude.
    pub(crate) fn new(b: &mut FunctionBuilder, zp_y: i32, lo: i32, hi: i32, small_multipliers: bool) -> Epilogue {
        let splat_f = |b: &mut FunctionBuilder, v: f32| {
            let c = b.ins().f32const(v);
            b.ins().splat(types::F32X4, c)
        };
        let unsigned_out = lo >= 0;
        let storage = if unsigned_out { (0, 255) } else { (-128, 127) };
        let saturating = small_multipliers.then(|| {
            ((lo, hi) != storage).then(|| {
                let splat_b = |b: &mut FunctionBuilder, v: i32| {
                    let c = b.ins().iconst(types::I8, v as i8 as i64);
                    b.ins().splat(types::I8X16, c)
                };
                (splat_b(b, lo), splat_b(b, hi))
            })
        });
        let (lo, hi) = (splat_f(b, (lo - zp_y) as f32), splat_f(b, (hi - zp_y) as f32));
        let c = b.ins().iconst(types::I32, zp_y as i64);
        let zp = b.ins().splat(types::I32X4, c);
        Epilogue { lo, hi, zp, unsigned_out, saturating }
    }

    /// The requantized i32x4 of `acc` (i32x4) with multipliers `m` (f32x4), before the clamp
    /// where the narrowing clamps ([`Epilogue::bytes`]).
    pub(crate) fn apply(&self, b: &mut FunctionBuilder, acc: Value, m: Value) -> Value {
        let little = MemFlagsData::new().with_endianness(Endianness::Little);
        let f = b.ins().fcvt_from_sint(types::F32X4, acc);
        let f = b.ins().fmul(f, m);
        let mut f = b.ins().nearest(f);
        if self.saturating.is_none() {
            // maxps(f, lo) and minps(f, hi), in the forms the backend matches.
            let above = b.ins().fcmp(FloatCC::LessThan, self.lo, f);
            let above = b.ins().bitcast(types::F32X4, little, above);
            f = b.ins().bitselect(above, f, self.lo);
            let below = b.ins().fcmp(FloatCC::LessThan, f, self.hi);
            let below = b.ins().bitcast(types::F32X4, little, below);
            f = b.ins().bitselect(below, f, self.hi);
        }
        let q = b.ins().x86_cvtt2dq(types::I32X4, f);
        b.ins().iadd(q, self.zp)
    }

    /// The output bytes of requantized values ([`Epilogue::apply`]): `q[0]`, `q[1]` in lanes 0–7
    /// (`q[2]`, `q[3]` in 8–15, or 0–7 again when there are two), clamped.
    pub(crate) fn bytes(&self, b: &mut FunctionBuilder, q: &[Value]) -> Value {
        let h0 = b.ins().snarrow(q[0], q[1]);
        let h1 = if q.len() == 4 { b.ins().snarrow(q[2], q[3]) } else { h0 };
        let bytes = if self.unsigned_out { b.ins().unarrow(h0, h1) } else { b.ins().snarrow(h0, h1) };
        match self.saturating {
            Some(Some((lo, hi))) if self.unsigned_out => {
                let bytes = b.ins().umax(bytes, lo);
                b.ins().umin(bytes, hi)
            }
            Some(Some((lo, hi))) => {
                let bytes = b.ins().smax(bytes, lo);
                b.ins().smin(bytes, hi)
            }
            _ => bytes,
        }
    }
}

/// Narrows i32x4 values `q` (in the output's range) to bytes and stores the first `lanes` (at
/// most 8) at `addr`.
pub(crate) fn store_bytes(b: &mut FunctionBuilder, q: [Value; 2], unsigned_out: bool, addr: Value, lanes: usize) {
    let h16 = b.ins().snarrow(q[0], q[1]);
    let bytes = if unsigned_out { b.ins().unarrow(h16, h16) } else { b.ins().snarrow(h16, h16) };
    store_lanes(b, bytes, addr, lanes);
}

/// Stores the first `lanes` (at most 16) bytes of `bytes` (i8x16) at `addr`: whole words where
/// it can, else byte by byte.
pub(crate) fn store_lanes(b: &mut FunctionBuilder, bytes: Value, addr: Value, lanes: usize) {
    let little = MemFlagsData::new().with_endianness(Endianness::Little);
    let raw = MemFlagsData::new().with_notrap();
    if lanes >= 16 {
        b.ins().store(raw, bytes, addr, 0);
        return;
    }
    // An 8-byte word, then a 4-byte one, then single bytes.
    let mut t = 0;
    if lanes >= 8 {
        let words = b.ins().bitcast(types::I64X2, little, bytes);
        let word = b.ins().extractlane(words, 0);
        b.ins().store(raw, word, addr, 0);
        t = 8;
    }
    if lanes - t >= 4 {
        let words = b.ins().bitcast(types::I32X4, little, bytes);
        let word = b.ins().extractlane(words, (t / 4) as u8);
        b.ins().store(raw, word, addr, t as i32);
        t += 4;
    }
    for t in t..lanes {
        let byte = b.ins().extractlane(bytes, t as u8);
        b.ins().store(raw, byte, addr, t as i32);
    }
}

/// Whether every multiplier is finite and below 1/2 in magnitude (see [`Epilogue`]).
pub(crate) fn small(mults: &[f32]) -> bool {
    mults.iter().all(|m| m.abs() < 0.5)
}
