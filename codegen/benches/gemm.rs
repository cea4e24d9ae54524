//! `cargo bench -p qc-codegen`: the GEMM kernel's throughput on each path, next to an f32
//! ndarray GEMM of the same shape measured in the same run. Prints medians and GOPS
//! (2·M·N·K per second). Then the VNNI kernel on block-sparse weights (blocks of 16 columns × 4 k
//! zeroed, as `sparsify --block` makes them) at 50, 80 and 90 %, against the dense kernel of the
//! same run.

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

fn main() {
    let runs = if std::env::var("QC_SLOW").is_ok() { 101 } else { 21 };
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
        for path in [Path::Scalar, Path::Sse, Path::Vnni] {
            let t0 = Instant::now();
            let kernel = GemmKernel::compile_on(&spec, path).expect("compiles");
            let compile = t0.elapsed().as_secs_f64();
            let t = time(runs, || kernel.run(&a, m, &mut out).expect("runs"));
            println!(
                "{m}x{n}x{k}: int8 {path:?} {:.3} ms, {:.1} GOPS, {:.2}x f32, JIT compile {:.2} ms",
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
            let kernel = GemmKernel::compile_on(&spec, Path::Vnni).expect("compiles");
            let t = time(runs, || kernel.run(&a, m, &mut out).expect("runs"));
            if sparsity == 0.0 {
                dense_t = t;
            }
            println!(
                "{m}x{n}x{k}: int8 Vnni, {:.0} % block sparsity: {:.3} ms, {:.2}x the dense kernel",
                sparsity * 100.0,
                t * 1e3,
                dense_t / t
            );
        }
    }
}
