//! `cargo bench -p qc-codegen`: first this CPU's peak for each dot-instruction sequence
//! (`support/peak.rs`); then convolutions through `CompiledModel` (3×3 64→64 on 16×16 ×4 and on
//! 56×56, 3×3 128→128 on 8×8 ×8, 1×1 256→256 on 14×14), each timed as its own step, with their
//! GOPS as a share of the best integer peak and next to the f32 GEMM of their shape; then the
//! GEMM kernel's throughput on each path, next to an f32 ndarray GEMM of the same shape measured
//! in the same run. Prints medians and GOPS (2·M·N·K per second). Then the VNNI kernel on block-sparse weights (blocks of 16 columns × 4 k
//! zeroed, as `sparsify --block` makes them) at 50, 80 and 90 %, against the dense kernel of the
//! same run.

#[path = "support/peak.rs"]
mod peak;

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

/// A `k`×`k` convolution (pad `k / 2`) of `c` → `c` channels over `hw × hw` images, `batch` at
/// a time, with 8-bit weights or 7-bit ones (in [−64, 64], `--weight-bits 7`); `peak` is the best
/// integer peak in GOPS.
fn conv(runs: usize, c: usize, hw: usize, batch: usize, k: usize, bits: u8, peak: f64) {
    let weight = |i: usize| if bits == 7 { (i * 37 % 129) as i32 - 64 } else { (i * 37 % 255) as i32 - 127 };
    let weights: Vec<String> = (0..c * c * k * k).map(|i| weight(i).to_string()).collect();
    let q = "!q<u8, 0.02, 3>";
    let text = format!(
        "func @conv(%x: tensor<?x{c}x{hw}x{hw}x{q}>) -> tensor<?x{c}x{hw}x{hw}x{q}> {{
  %w = const dense<[{w}]> : tensor<{c}x{c}x{k}x{k}x!q<i8, 0.01, 0>>
  %y = conv2d(%x, %w) {{pads = [{p}, {p}, {p}, {p}]}} : tensor<?x{c}x{hw}x{hw}x{q}>
  return %y
}}",
        w = weights.join(", "),
        p = k / 2
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
    let (m, depth) = (batch * hw * hw, k * k * c);
    let af = ndarray::Array2::<f32>::from_shape_fn((m, depth), |(i, j)| ((i + j) % 7) as f32);
    let bf = ndarray::Array2::<f32>::from_shape_fn((depth, c), |(i, j)| ((i * j) % 5) as f32);
    let f32_t = time(runs, || {
        std::hint::black_box(af.dot(&bf));
    });
    let ops = 2.0 * (m * depth * c) as f64;
    println!(
        "conv {k}x{k} {c}->{c} {hw}x{hw} batch {batch}, {bits}-bit weights ({}): int8 {:.3} ms, {:.1} GOPS = {:.0} % of the int8 peak (f32 GEMM of its shape {:.1} GFLOPS, {:.2}x), compile {:.2} ms",
        model.kernels().into_iter().find(|(label, _)| label.contains("conv2d")).map_or(String::new(), |(_, how)| how),
        step.seconds * 1e3,
        ops / step.seconds / 1e9,
        100.0 * ops / step.seconds / 1e9 / peak,
        ops / f32_t / 1e9,
        f32_t / step.seconds,
        compile * 1e3
    );
}

fn main() {
    let runs = if std::env::var("QC_SLOW").is_ok() { 101 } else { 21 };
    let peaks = peak::measure();
    for p in &peaks {
        println!("peak {}: {:.1} {}", p.name, p.gops, if p.integer { "GOPS" } else { "GFLOPS" });
    }
    let best = peaks.iter().filter(|p| p.integer).map(|p| p.gops).fold(f64::NAN, f64::max);
    for bits in [8, 7] {
        conv(runs, 64, 16, 4, 3, bits, best);
        conv(runs, 64, 56, 1, 3, bits, best);
        conv(runs, 128, 8, 8, 3, bits, best);
        conv(runs, 256, 14, 1, 1, bits, best);
    }
    // The last: MobileNetV2's first expanding 1×1 convolution (56×56 pixels, 24 → 144 channels).
    for (m, n, k) in [(256usize, 256usize, 256usize), (64, 1024, 576), (1, 128, 64), (3136, 144, 24)] {
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
        // The same layer with 7-bit weights, for the `vpmaddubsw` path.
        let spec7 = GemmSpec { weights: (0..n * k).map(|i| (i * 7 % 129) as i32 - 64).collect(), ..spec.clone() };
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
            (Path::Avx2Maddubs, on(qc_codegen::Isa::Avx2)),
            (Path::Vnni, vnni),
            (Path::Avx512, on(qc_codegen::Isa::Avx512Vnni)),
        ];
        for path in paths.into_iter().filter_map(|(p, on)| on.then_some(p)) {
            let t0 = Instant::now();
            let spec = if path == Path::Avx2Maddubs { &spec7 } else { &spec };
            let kernel = GemmKernel::compile_on(spec, path).expect("compiles");
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
