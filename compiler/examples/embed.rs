//! Embedding qc in a Rust program: load a model, compile it with the JIT, run it from several
//! threads at once. `cargo run --release -p qc --example embed [MODEL]`; the default model is the
//! digits MLP quantized by `qc compile ../shared/corpus/models/digits_mlp_fp32.onnx --calib
//! ../shared/corpus/data/digits_calib_x.npy -o examples/digits_mlp_int8.qir`.

use qc::load_model;
use qc_codegen::CompiledModel;
use qc_ir::Tensor;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "examples/digits_mlp_int8.qir".into());
    let model = load_model(std::path::Path::new(&path), None)?;
    let compiled = Arc::new(CompiledModel::compile(&model.graph)?);
    println!("{path}: {} JIT kernels", compiled.kernel_count());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let m = compiled.clone();
            std::thread::spawn(move || {
                let dims: Vec<usize> = m.input_dims().iter().map(|&d| d.max(1)).collect();
                let n: usize = dims.iter().product();
                let x = Tensor::F32(
                    ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&dims), (0..n).map(|i| ((i + t) % 5) as f32 / 5.0).collect())
                        .expect("sized"),
                );
                m.run(&[x]).map(|mut y| y.remove(0))
            })
        })
        .collect();
    for (t, h) in threads.into_iter().enumerate() {
        let y = h.join().expect("the thread finished")?;
        println!("thread {t}: {:?}", y.to_f64_vec().iter().map(|v| (v * 1e4).round() / 1e4).collect::<Vec<_>>());
    }
    Ok(())
}
