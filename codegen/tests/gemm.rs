//! The JIT GEMM kernel against the reference evaluator, bit for bit, over random shapes, zero
//! points, scales, activations, both requantization modes, i4, 7-bit and i8 weights, and
//! block-sparse weights (whose zero groups the vector kernel skips). `QC_SLOW=1` runs 1000 cases.

use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use qc_codegen::gemm::{GemmKernel, GemmSpec, Path, bytes_tensor, tensor_bytes};
use qc_ir::eval::eval_op;
use qc_ir::requant::acc_scale;
use qc_ir::{Attr, Attrs, ElemType, OpKind, QuantParams, ScalarType, Tensor, TensorType};

#[derive(Debug, Clone)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    a_signed: bool,
    y_signed: bool,
    zp_x: i32,
    zp_y: i32,
    s_x: f32,
    s_y: f32,
    s_w: Vec<f32>,
    zp_w: Vec<i32>,
    a: Vec<i32>,
    w: Vec<i32>,
    bias: Vec<i32>,
    relu: bool,
    q31: bool,
    trans_b: bool,
    /// Weight bits: 8, 7 (values in [-64, 64], which `vpmaddubsw` multiplies exactly) or 4
    /// (values in [-8, 7]).
    bits: u8,
}

/// Zeroes the weights of the (16 columns × 4 k) blocks `mask` selects, as `sparsify --block`
/// does, so that the kernel's zero-group skipping is exercised.
fn zero_blocks(w: &mut [i32], n: usize, k: usize, mask: &[bool]) {
    let groups = k.div_ceil(4);
    for c in 0..n {
        for kk in 0..k {
            if mask[((c / 16) * groups + kk / 4) % mask.len()] {
                w[c * k + kk] = 0;
            }
        }
    }
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..5, 1usize..40, 1usize..70, any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>())
        .prop_flat_map(|(m, n, k, a_signed, y_signed, relu, q31, trans_b, zp_w_zero)| {
            let (alo, ahi) = if a_signed { (-128, 127) } else { (0, 255) };
            let (ylo, yhi) = if y_signed { (-128, 127) } else { (0, 255) };
            (
                Just((m, n, k, a_signed, y_signed, relu, q31, trans_b)),
                alo..=ahi,
                ylo..=yhi,
                1e-4f32..0.1,
                1e-3f32..1.0,
                prop::collection::vec(1e-4f32..0.05, n),
                prop::collection::vec(if zp_w_zero { 0..=0 } else { -10..=10 }, n),
                prop::collection::vec(alo..=ahi, m * k),
                prop::collection::vec(-128i32..=127, n * k),
                prop::collection::vec(-5000i32..5000, n),
                prop::option::of(prop::collection::vec(any::<bool>(), 1..40)),
                prop::sample::select(vec![8u8, 7, 4]),
            )
        })
        .prop_map(
            |(
                (m, n, k, a_signed, y_signed, relu, q31, trans_b),
                zp_x,
                zp_y,
                s_x,
                s_y,
                s_w,
                mut zp_w,
                a,
                mut w,
                bias,
                mask,
                bits,
            )| {
                if let Some(mask) = mask {
                    zero_blocks(&mut w, n, k, &mask);
                }
                if bits == 4 {
                    w.iter_mut().for_each(|v: &mut i32| *v = v.rem_euclid(16) - 8);
                    zp_w.iter_mut().for_each(|z: &mut i32| *z = (*z).clamp(-8, 7));
                }
                if bits == 7 {
                    // Weights whose `w − zp_w` lies in [-64, 64], the extremes often.
                    zp_w.iter_mut().for_each(|z| *z = 0);
                    w.iter_mut().for_each(|v: &mut i32| *v = (*v).clamp(-64, 64));
                }
                Case { m, n, k, a_signed, y_signed, zp_x, zp_y, s_x, s_y, s_w, zp_w, a, w, bias, relu, q31, trans_b, bits }
            },
        )
}

fn tensor(shape: &[usize], v: &[i32], st: ScalarType) -> Tensor {
    Tensor::I32(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap()).cast(st)
}

fn check(c: &Case) -> Result<(), TestCaseError> {
    let (st_a, st_y) =
        (if c.a_signed { ScalarType::I8 } else { ScalarType::U8 }, if c.y_signed { ScalarType::I8 } else { ScalarType::U8 });
    let w_axis = if c.trans_b { 0 } else { 1 };
    let w_shape = if c.trans_b { [c.n, c.k] } else { [c.k, c.n] };
    // Weights are generated as [n][k]; lay them out as the op reads them.
    let w_data: Vec<i32> = if c.trans_b { c.w.clone() } else { (0..c.k * c.n).map(|i| c.w[(i % c.n) * c.k + i / c.n]).collect() };
    let xt = TensorType::new(&[c.m as u64, c.k as u64], ElemType::Quant(QuantParams::per_tensor(st_a, c.s_x, c.zp_x)));
    let storage = if c.bits == 4 { ScalarType::I4 } else { ScalarType::I8 };
    let wq = QuantParams { storage, axis: Some(w_axis), scales: c.s_w.clone(), zero_points: c.zp_w.clone() };
    let wt = TensorType::new(&w_shape.map(|d| d as u64), ElemType::Quant(wq));
    let bs: Vec<f32> = c.s_w.iter().map(|&s| acc_scale(c.s_x, s)).collect();
    let bt = TensorType::new(
        &[c.n as u64],
        ElemType::Quant(QuantParams { storage: ScalarType::I32, axis: Some(0), scales: bs, zero_points: vec![0; c.n] }),
    );
    let yt = TensorType::new(&[c.m as u64, c.n as u64], ElemType::Quant(QuantParams::per_tensor(st_y, c.s_y, c.zp_y)));
    let mut attrs = Attrs::new();
    if c.trans_b {
        attrs.set("trans_b", Attr::Bool(true));
    }
    if c.relu {
        attrs.set("activation", Attr::Str("relu".into()));
    }
    if c.q31 {
        attrs.set("requant", Attr::Str("q31".into()));
    }
    let (x, w, b) =
        (tensor(&[c.m, c.k], &c.a, st_a), tensor(&w_shape, &w_data, ScalarType::I8), tensor(&[c.n], &c.bias, ScalarType::I32));
    let kind = if c.trans_b { OpKind::Gemm } else { OpKind::MatMul };
    let (args, tys) = if kind == OpKind::Gemm { (vec![&x, &w, &b], vec![&xt, &wt, &bt]) } else { (vec![&x, &w], vec![&xt, &wt]) };
    let want = eval_op(kind, &attrs, &args, &tys, &yt).map_err(TestCaseError::fail)?;
    let spec = GemmSpec::from_node(kind, &attrs, &tys, &w, if kind == OpKind::Gemm { Some(&b) } else { None }, &yt)
        .map_err(TestCaseError::fail)?;
    // Every path on this machine that the layer allows: scalar always; SSE for f32
    // requantization (weights within i16); VNNI when the weights also fit i8; `vpmaddubsw` when
    // besides no pair of them can saturate.
    let f32_mode = !c.q31;
    let mut paths = vec![Path::Scalar];
    if f32_mode {
        paths.push(Path::Sse);
        paths.extend(native_paths().into_iter().filter(|&p| p == Path::Avx2));
        if spec.weights.iter().all(|w| (-128..=127).contains(w)) {
            paths.push(Path::Vnni);
            paths.extend(native_paths().into_iter().filter(|&p| p == Path::Avx512));
            if qc_codegen::gemm::avx2_maddubs::pairs_fit(&spec) {
                paths.extend(native_paths().into_iter().filter(|&p| p == Path::Avx2).map(|_| Path::Avx2Maddubs));
            }
        }
    }
    if c.bits == 7 && f32_mode && native_paths().contains(&Path::Avx2) {
        prop_assert!(paths.contains(&Path::Avx2Maddubs), "7-bit weights take the vpmaddubsw path");
    }
    for path in paths {
        let kernel = GemmKernel::compile_on(&spec, path).map_err(TestCaseError::fail)?;
        let mut out = vec![0u8; c.m * c.n];
        kernel.run(&tensor_bytes(&x).unwrap(), c.m, &mut out).map_err(TestCaseError::fail)?;
        let got = bytes_tensor(out, &[c.m, c.n], &yt.elem);
        prop_assert_eq!(&got, &want, "{:?} path", path);
    }
    Ok(())
}

/// The precompiled `std::arch` paths this CPU runs (AVX2 `vpmaddwd`, AVX-512 VNNI `vpdpbusd`).
fn native_paths() -> Vec<Path> {
    let levels = qc_codegen::Isa::host_levels();
    let mut paths = Vec::new();
    if levels.contains(&qc_codegen::Isa::Avx2) {
        paths.push(Path::Avx2);
    }
    if levels.contains(&qc_codegen::Isa::Avx512Vnni) {
        paths.push(Path::Avx512);
    }
    paths
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if std::env::var("QC_SLOW").is_ok() { 1000 } else { 64 }))]

    #[test]
    fn gemm_kernel_is_bit_exact(c in case()) {
        check(&c)?;
    }
}

#[test]
fn lengths_are_checked() {
    let spec = GemmSpec {
        n: 2,
        k: 3,
        zp_a: 0,
        a_signed: false,
        weights: vec![1; 6],
        bias: vec![0; 2],
        requant: vec![qc_ir::requant::Requant::F32(1.0); 2],
        zp_y: 0,
        lo: 0,
        hi: 255,
    };
    let k = GemmKernel::compile(&spec, qc_codegen::Isa::host()).unwrap();
    let mut out = vec![0u8; 4];
    assert!(k.run(&[1, 2, 3, 4, 5], 2, &mut out).is_err());
    assert!(k.run(&[1, 2, 3, 4, 5, 6], 2, &mut out[..3]).is_err());
    k.run(&[1, 2, 3, 4, 5, 6], 2, &mut out).unwrap();
    assert_eq!(out, [6, 6, 15, 15]);
}

#[test]
fn adversarial_shapes_stay_inside_their_buffers() {
    // All-zero weights (every group skipped: empty group tables), no rows, one row, odd K and N
    // around the 4-byte and 16-column boundaries: each path's result equals the scalar one.
    for (n, k) in [(1usize, 1usize), (16, 4), (17, 5), (33, 7), (3, 64)] {
        for zero in [false, true] {
            let spec = GemmSpec {
                n,
                k,
                zp_a: 7,
                a_signed: false,
                weights: (0..n * k).map(|i| if zero { 0 } else { (i as i32 * 37 % 255) - 127 }).collect(),
                bias: vec![11; n],
                requant: vec![qc_ir::requant::Requant::F32(0.01); n],
                zp_y: 3,
                lo: 0,
                hi: 255,
            };
            for m in [0usize, 1, 2, 5] {
                let a: Vec<u8> = (0..m * k).map(|i| (i * 13 % 256) as u8).collect();
                let mut want = vec![0u8; m * n];
                GemmKernel::compile_on(&spec, Path::Scalar).unwrap().run(&a, m, &mut want).unwrap();
                for path in [Path::Sse, Path::Vnni].into_iter().chain(native_paths()) {
                    let mut got = vec![0u8; m * n];
                    GemmKernel::compile_on(&spec, path).unwrap().run(&a, m, &mut got).unwrap();
                    assert_eq!(got, want, "{path:?} n={n} k={k} m={m} zero={zero}");
                }
            }
        }
    }
}

/// The `vpmaddubsw` path at the edge of saturation: pairs of weights whose positive (or negative)
/// parts sum to exactly ±128 meet activations of 255, where a pair of products is ±32640, and
/// mixed-sign pairs reach the i8 extremes; the path equals the scalar one. A pair one past the
/// edge is refused, and `choose` then takes the `vpmaddwd` path.
#[test]
fn maddubs_path_is_exact_at_the_edge_of_saturation() {
    use qc_codegen::gemm::avx2_maddubs::pairs_fit;
    if !native_paths().contains(&Path::Avx2) {
        eprintln!("skipped: this CPU has no AVX2");
        return;
    }
    let edge = [[64, 64], [-64, -64], [127, 1], [-127, -1], [-128, 0], [127, -128], [0, 128 - 1], [-1, -127]];
    for (n, k) in [(1usize, 2usize), (8, 16), (17, 10), (33, 7)] {
        let weights: Vec<i32> = (0..n * k).map(|i| edge[((i % k) / 2 + i / k) % edge.len()][i % k % 2]).collect();
        for zp_a in [0, 255] {
            let spec = GemmSpec {
                n,
                k,
                zp_a,
                a_signed: false,
                weights: weights.clone(),
                bias: vec![-7; n],
                requant: vec![qc_ir::requant::Requant::F32(0.0007); n],
                zp_y: 128,
                lo: 0,
                hi: 255,
            };
            assert!(pairs_fit(&spec), "n={n} k={k}");
            assert_eq!(Path::choose(&spec, qc_codegen::Isa::Avx2), Path::Avx2Maddubs);
            for m in [1usize, 3, 4, 6] {
                for fill in [0u8, 255, 1] {
                    let a: Vec<u8> = (0..m * k).map(|i| if fill == 1 { (i * 97 % 256) as u8 } else { fill }).collect();
                    let mut want = vec![0u8; m * n];
                    GemmKernel::compile_on(&spec, Path::Scalar).unwrap().run(&a, m, &mut want).unwrap();
                    let mut got = vec![0u8; m * n];
                    GemmKernel::compile_on(&spec, Path::Avx2Maddubs).unwrap().run(&a, m, &mut got).unwrap();
                    assert_eq!(got, want, "n={n} k={k} m={m} zp={zp_a} fill={fill}");
                }
            }
        }
    }
    for past in [[127, 2], [-100, -29], [65, 64]] {
        let spec = GemmSpec {
            n: 1,
            k: 4,
            zp_a: 0,
            a_signed: false,
            weights: vec![1, 1, past[0], past[1]],
            bias: vec![0],
            requant: vec![qc_ir::requant::Requant::F32(0.01)],
            zp_y: 0,
            lo: 0,
            hi: 255,
        };
        assert!(!pairs_fit(&spec), "{past:?}");
        assert_eq!(Path::choose(&spec, qc_codegen::Isa::Avx2), Path::Avx2);
        assert!(GemmKernel::compile_on(&spec, Path::Avx2Maddubs).is_err());
    }
}

/// A kernel writing i32 accumulators (`matmul_integer`, `conv_integer`): on every path,
/// `bias + Σ (a − zp)·w` in wrapping i32 arithmetic — which is what the evaluator's exact i64
/// product truncated to i32 gives — over random shapes, signedness, zero points and weights
/// (block-sparse ones too, and weights large enough that some sums wrap).
#[test]
fn i32_output_is_the_exact_product_on_every_path() {
    use qc_codegen::gemm::Output;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for case in 0..super_cases() {
        let (m, n, k) = (next(20) as usize, 1 + next(40) as usize, 1 + next(80) as usize);
        let a_signed = next(2) == 1;
        let zp_a = if a_signed { next(256) as i32 - 128 } else { next(256) as i32 };
        let (wlo, wspan) = match case % 5 {
            0 => (-32768, 65536),
            // 7-bit weights: the AVX2 `vpmaddubsw` path takes them.
            1 | 3 => (-64, 129),
            _ => (-128, 256),
        };
        let weights: Vec<i32> =
            (0..n * k).map(|i| if (i / 4) % 3 == 0 && case % 2 == 0 { 0 } else { wlo + next(wspan) as i32 }).collect();
        let bias: Vec<i32> = (0..n).map(|_| next(2001) as i32 - 1000).collect();
        let spec = GemmSpec {
            n,
            k,
            zp_a,
            a_signed,
            weights: weights.clone(),
            bias: bias.clone(),
            requant: vec![qc_ir::requant::Requant::F32(1.0); n],
            zp_y: 0,
            lo: 0,
            hi: 255,
        };
        let a: Vec<u8> = (0..m * k).map(|_| next(256) as u8).collect();
        let value = |b: u8| if a_signed { b as i8 as i64 } else { b as i64 };
        let want: Vec<i32> = (0..m * n)
            .map(|i| {
                let (r, c) = (i / n, i % n);
                let dot: i64 = (0..k).map(|kk| (value(a[r * k + kk]) - zp_a as i64) * weights[c * k + kk] as i64).sum();
                (bias[c] as i64 + dot) as i32
            })
            .collect();
        let maddubs = cfg!(target_arch = "x86_64") && std::is_x86_feature_detected!("avx2");
        let avx512 = cfg!(target_arch = "x86_64")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni");
        let paths = [Path::Scalar, Path::Sse, Path::Vnni, Path::Avx2, Path::Avx2Maddubs, Path::Avx512];
        let on_host = |p: Path| match p {
            Path::Avx2 | Path::Avx2Maddubs => maddubs,
            Path::Avx512 => avx512,
            _ => true,
        };
        for path in paths.into_iter().filter(|&p| on_host(p)) {
            // Weights beyond i8 (i16) have no VNNI kernel; beyond i16 none but the scalar one (and
            // the AVX2 `vpmaddwd` one takes i16);
            // `vpmaddubsw` takes 7-bit weights (and wider ones whose pairs cannot saturate).
            let Ok(kernel) = GemmKernel::compile_output(&spec, path, Output::I32) else {
                let limit = match path {
                    Path::Avx2Maddubs => 64,
                    Path::Avx2 => 32767,
                    _ => 127,
                };
                assert!(path != Path::Scalar && weights.iter().any(|&w| w < -limit - 1 || w > limit), "{path:?} refused");
                continue;
            };
            let mut got = vec![0i32; m * n];
            kernel.run_i32(&a, m, &mut got).unwrap();
            assert_eq!(got, want, "{path:?} m={m} n={n} k={k} signed={a_signed} zp={zp_a}");
            let mut bytes = vec![0u8; m * n];
            assert!(kernel.run(&a, m, &mut bytes).is_err(), "an i32 kernel refuses a byte output");
        }
    }
}

fn super_cases() -> usize {
    if std::env::var("QC_SLOW").is_ok() { 1000 } else { 100 }
}
