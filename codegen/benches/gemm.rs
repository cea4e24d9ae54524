//! `cargo bench -p qc-codegen`: the GEMM kernel's throughput on each path, next to an f32
//! ndarray GEMM of the same shape measured in the same run. Prints medians and GOPS
//! (2·M·N·K per second). Then a 3×3 convolution of 64 channels through `CompiledModel` (patch
//! gather from NHWC + GEMM), timed as its own step, next to the f32 GEMM of its shape. Then the VNNI kernel on block-sparse weights (blocks of 16 columns × 4 k
//! zeroed, as `sparsify --block` makes them) at 50, 80 and 90 %, against the dense kernel of the
//! same run.

use qc_codegen::CompiledModel;
use qc_codegen::gemm::{GemmKernel, GemmSpec, Path};
use qc_ir::requant::Requant;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// A 3×3, pad 1 convolution of `c` → `c` channels over `hw × hw` images, `batch` at a time.
fn conv(runs: usize, c: usize, hw: usize, batch: usize) {
    let weights: Vec<String> = (0..c * c * 9).map(|i| ((i * 37 % 255) as i32 - 127).to_string()).collect();
    let q = "!q<u8, 0.02, 3>";
    let text = format!(
        "func @conv(%x: tensor<?x{c}x{hw}x{hw}x{q}>) -> tensor<?x{c}x{hw}x{hw}x{q}> {{
  %w = const dense<[{w}]> : tensor<{c}x{c}x3x3x!q<i8, 0.01, 0>>
  %y = conv2d(%x, %w) {{pads = [1, 1, 1, 1]}} : tensor<?x{c}x{hw}x{hw}x{q}>
  return %y
}}",
        w = weights.join(", ")
    );
    let g = qc_ir::text::parse(&text).expect("parses");
    let t0 = Instant::now();
    let model = CompiledModel::compile(&g).expect("compiles");
    let compile = t0.elapsed().as_secs_f64();
    let x = qc_ir::Tensor::U8(ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[batch, c, hw, hw]), |i| {
        (i[1] * 7 + i[2] * 3 + i[3]) as u8
    }));
    let profile = model.profile(std::slice::from_ref(&x), runs).expect("runs");
    let step = profile.iter().find(|p| p.label.contains("conv2d")).expect("a conv step");
    let (m, k) = (batch * hw * hw, 9 * c);
    let af = ndarray::Array2::<f32>::from_shape_fn((m, k), |(i, j)| ((i + j) % 7) as f32);
    let bf = ndarray::Array2::<f32>::from_shape_fn((k, c), |(i, j)| ((i * j) % 5) as f32);
    let f32_t = time(runs, || {
        std::hint::black_box(af.dot(&bf));
    });
    let ops = 2.0 * (m * k * c) as f64;
    println!(
        "conv 3x3 {c}->{c} {hw}x{hw} batch {batch}: int8 {:.3} ms, {:.1} GOPS (f32 GEMM of its shape {:.1} GFLOPS, {:.2}x), compile {:.2} ms",
        step.seconds * 1e3,
        ops / step.seconds / 1e9,
        ops / f32_t / 1e9,
        f32_t / step.seconds,
        compile * 1e3
    );
}

fn main() {
    let runs = if std::env::var("QC_SLOW").is_ok() { 101 } else { 21 };
    conv(runs, 64, 16, 4);
    conv(runs, 128, 8, 8);
    for (m, n, k) in [(256usize, 256usize, 256usize), (64, 1024, 576), (1, 128, 64)] {
        let ops = 2.0 * (m * n * k) as f64;
        let spec = GemmSpec {
            n,
            k,
            zp_a: 3,
            a_signed: false,
            weights: (0..n * k).map(|i| (i * 7 % 255) as i32 - 127).collect(),
            bias: vec![100; n],
            requant: vec![Requant::F32(0.001); n],
            zp_y: 0,
            lo: 0,
            hi: 255,
        };
        let a: Vec<u8> = (0..m * k).map(|i| (i * 13 % 256) as u8).collect();
        let mut out = vec![0u8; m * n];
        let af = ndarray::Array2::<f32>::from_shape_fn((m, k), |(i, j)| ((i + j) % 7) as f32);
        let bf = ndarray::Array2::<f32>::from_shape_fn((k, n), |(i, j)| ((i * j) % 5) as f32);
        let f32_t = time(runs, || {
            std::hint::black_box(af.dot(&bf));
        });
        println!("{m}x{n}x{k}: f32 ndarray {:.3} ms, {:.1} GFLOPS", f32_t * 1e3, ops / f32_t / 1e9);
        // The paths this CPU's ISA levels use (the VNNI paths only where it has VNNI).
        let levels = qc_codegen::Isa::host_levels();
        let on = |l: qc_codegen::Isa| levels.contains(&l);
        let vnni = qc_codegen::Isa::host().vnni();
        let paths = [
            (Path::Scalar, true),
            (Path::Sse, true),
            (Path::Avx2, on(qc_codegen::Isa::Avx2)),
            (Path::Vnni, vnni),
            (Path::Avx512, on(qc_codegen::Isa::Avx512Vnni)),
        ];
        for path in paths.into_iter().filter_map(|(p, on)| on.then_some(p)) {
            let t0 = Instant::now();
            let kernel = GemmKernel::compile_on(&spec, path).expect("compiles");
            let compile = t0.elapsed().as_secs_f64();
            let t = time(runs, || kernel.run(&a, m, &mut out).expect("runs"));
            println!(
                "{m}x{n}x{k}: int8 {} {:.3} ms, {:.1} GOPS, {:.2}x f32, JIT compile {:.2} ms",
                path.name(),
                t * 1e3,
                ops / t / 1e9,
                f32_t / t,
                compile * 1e3
            );
        }
    }
    for (m, n, k) in [(256usize, 256usize, 256usize), (64, 64, 576)] {
        let a: Vec<u8> = (0..m * k).map(|i| (i * 13 % 256) as u8).collect();
        let mut out = vec![0u8; m * n];
        let mut dense_t = 0.0;
        for sparsity in [0.0, 0.5, 0.8, 0.9] {
            // Zero a pseudo-random `sparsity` share of the (16-column block, 4-k group) blocks.
            let groups = k.div_ceil(4);
            let blocks = n.div_ceil(16) * groups;
            let mut order: Vec<usize> = (0..blocks).collect();
            order.sort_by_key(|&i| (i * 2654435761) % 4093);
            let zeroed: std::collections::HashSet<usize> = order[..(blocks as f64 * sparsity) as usize].iter().copied().collect();
            let weights = (0..n * k)
                .map(|i| {
                    let (c, kk) = (i / k, i % k);
                    if zeroed.contains(&((c / 16) * groups + kk / 4)) { 0 } else { (i * 7 % 255) as i32 - 127 }
                })
                .collect();
            let spec = GemmSpec {
                n,
                k,
                zp_a: 3,
                a_signed: false,
                weights,
                bias: vec![100; n],
                requant: vec![Requant::F32(0.001); n],
                zp_y: 0,
                lo: 0,
                hi: 255,
            };
            let kernel = GemmKernel::compile(&spec, qc_codegen::Isa::host()).expect("compiles");
            let t = time(runs, || kernel.run(&a, m, &mut out).expect("runs"));
            if sparsity == 0.0 {
                dense_t = t;
            }
            println!(
                "{m}x{n}x{k}: int8 {}, {:.0} % block sparsity: {:.3} ms, {:.2}x the dense kernel",
                kernel.path().name(),
                sparsity * 100.0,
                t * 1e3,
                dense_t / t
            );
        }
    }
}
