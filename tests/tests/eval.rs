//! The reference evaluator against hand-computed results.

use ndarray::{ArrayD, IxDyn};
use qc_ir::Tensor;
use qc_ir::eval::{evaluate, quantize_value};
use qc_ir::text::parse;

fn t(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
}

fn run(src: &str, inputs: &[Tensor]) -> Vec<f64> {
    let g = parse(src).unwrap_or_else(|d| panic!("{d:?}"));
    qc_ir::verify::verify(&g, Default::default()).unwrap_or_else(|d| panic!("{d:?}"));
    evaluate(&g, inputs).unwrap().remove(0).to_f64_vec()
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{a:?} vs {b:?}");
    }
}

#[test]
fn conv2d_padding_stride_bias() {
    let src = "func @f(%x: tensor<1x1x3x3xf32>) -> tensor<1x1x2x2xf32> {
  %w = const dense<[1.0, 1.0, 1.0, 1.0]> : tensor<1x1x2x2xf32>
  %b = const dense<[10.0]> : tensor<1xf32>
  %y = conv2d(%x, %w, %b) {pads = [1, 1, 0, 0], strides = [2, 2]} : tensor<1x1x2x2xf32>
  return %y
}";
    // Padded input rows/cols start at -1: windows at (-1,-1), (-1,1), (1,-1), (1,1).
    let x = t(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    close(&run(src, &[x]), &[11., 15., 21., 38.]);
}

#[test]
fn depthwise_conv_and_fused_relu() {
    let src = "func @f(%x: tensor<1x2x2x2xf32>) -> tensor<1x2x1x1xf32> {
  %w = const dense<[1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0]> : tensor<2x1x2x2xf32>
  %y = conv2d(%x, %w) {activation = \"relu\", groups = 2} : tensor<1x2x1x1xf32>
  return %y
}";
    let x = t(&[1, 2, 2, 2], &[1., 2., 3., 4., 1., 1., 1., 1.]);
    close(&run(src, &[x]), &[10., 0.]);
}

#[test]
fn pooling_padding_rules() {
    let x = t(&[1, 1, 2, 2], &[-1., -2., -3., -4.]);
    let max = "func @f(%x: tensor<1x1x2x2xf32>) -> tensor<1x1x2x2xf32> {
  %y = max_pool(%x) {kernel_shape = [2, 2], pads = [1, 1, 0, 0]} : tensor<1x1x2x2xf32>
  return %y
}";
    // Padding never wins a max, even over negative values.
    close(&run(max, std::slice::from_ref(&x)), &[-1., -1., -1., -1.]);
    let avg = |include: bool| {
        format!(
            "func @f(%x: tensor<1x1x2x2xf32>) -> tensor<1x1x2x2xf32> {{
  %y = avg_pool(%x) {{count_include_pad = {include}, kernel_shape = [2, 2], pads = [1, 1, 0, 0]}} : tensor<1x1x2x2xf32>
  return %y
}}"
        )
    };
    close(&run(&avg(false), std::slice::from_ref(&x)), &[-1., -1.5, -2., -2.5]);
    close(&run(&avg(true), &[x]), &[-0.25, -0.75, -1., -2.5]);
}

#[test]
fn quantize_rounds_half_to_even_and_saturates() {
    assert_eq!(quantize_value(0.5, 1.0, 0, -128, 127), 0);
    assert_eq!(quantize_value(1.5, 1.0, 0, -128, 127), 2);
    assert_eq!(quantize_value(2.5, 1.0, 0, -128, 127), 2);
    assert_eq!(quantize_value(-0.5, 1.0, 0, -128, 127), 0);
    assert_eq!(quantize_value(-1.5, 1.0, -3, -128, 127), -5);
    assert_eq!(quantize_value(1000.0, 0.1, 0, -128, 127), 127);
    assert_eq!(quantize_value(-1000.0, 0.1, 0, 0, 255), 0);
    // Divide by the scale: 0.3 / 0.1 is 2.9999998 in f32, which rounds to 3.
    assert_eq!(quantize_value(0.3, 0.1, 0, -128, 127), 3);
}

#[test]
fn quantize_dequantize_per_axis() {
    let src = "func @f(%x: tensor<2x2xf32>) -> tensor<2x2xf32> {
  %q = quantize(%x) : tensor<2x2x!q<i8:axis0, [0.5, 0.25], [0, 2]>>
  %y = dequantize(%q) : tensor<2x2xf32>
  return %y
}";
    let x = t(&[2, 2], &[0.3, -0.8, 0.3, 100.0]);
    // Row 0: 0.3/0.5 = 0.6 → 1 → 0.5; -1.6 → -2 → -1.0. Row 1: 1.2 → 1 + 2 = 3 → 0.25; 400 + 2 saturates to 127 → 31.25.
    close(&run(src, &[x]), &[0.5, -1.0, 0.25, 31.25]);
}

#[test]
fn resize_nearest_and_linear() {
    let x = t(&[1, 1, 1, 2], &[1., 3.]);
    let nearest = "func @f(%x: tensor<1x1x1x2xf32>) -> tensor<1x1x1x4xf32> {
  %y = resize(%x) {mode = \"nearest\", scales = [1.0, 1.0, 1.0, 2.0]} : tensor<1x1x1x4xf32>
  return %y
}";
    close(&run(nearest, std::slice::from_ref(&x)), &[1., 1., 3., 3.]);
    let linear = "func @f(%x: tensor<1x1x1x2xf32>) -> tensor<1x1x1x3xf32> {
  %y = resize(%x) {coordinate_transformation_mode = \"align_corners\", mode = \"linear\", sizes = [1, 1, 1, 3]} : tensor<1x1x1x3xf32>
  return %y
}";
    close(&run(linear, &[x]), &[1., 2., 3.]);
}

#[test]
fn slice_gemm_softmax() {
    let slice = "func @f(%x: tensor<6xf32>) -> tensor<3xf32> {
  %y = slice(%x) {ends = [-100], starts = [-1], steps = [-2]} : tensor<3xf32>
  return %y
}";
    close(&run(slice, &[t(&[6], &[0., 1., 2., 3., 4., 5.])]), &[5., 3., 1.]);
    let gemm = "func @f(%a: tensor<2x1xf32>) -> tensor<1x2xf32> {
  %b = const dense<[1.0, 2.0, 3.0, 4.0]> : tensor<2x2xf32>
  %c = const dense<[1.0, -1.0]> : tensor<2xf32>
  %y = gemm(%a, %b, %c) {alpha = 2.0, beta = 3.0, trans_a = true, trans_b = true} : tensor<1x2xf32>
  return %y
}";
    // A^T = [1, 2]; B^T = [[1, 3], [2, 4]]; A^T B^T = [5, 11]; 2 * that + 3 * [1, -1].
    close(&run(gemm, &[t(&[2, 1], &[1., 2.])]), &[13., 19.]);
    let softmax = "func @f(%x: tensor<1x3xf32>) -> tensor<1x3xf32> {
  %y = softmax(%x) : tensor<1x3xf32>
  return %y
}";
    let e: Vec<f64> = [0f64, 1., 2.].iter().map(|v| v.exp()).collect();
    let s: f64 = e.iter().sum();
    close(&run(softmax, &[t(&[1, 3], &[0., 1., 2.])]), &e.iter().map(|v| v / s).collect::<Vec<_>>());
}

#[test]
fn evaluator_rejects_wrong_inputs() {
    let g =
        parse("func @f(%x: tensor<1x3xf32>) -> tensor<1x3xf32> {\n  %y = relu(%x) : tensor<1x3xf32>\n  return %y\n}").unwrap();
    let e = evaluate(&g, &[t(&[1, 4], &[0.; 4])]).unwrap_err();
    assert!(e.0.contains("input %x must be tensor<1x3xf32>"), "{e}");
    let e = evaluate(&g, &[t(&[1, 3], &[0., f32::NAN, 0.])]).unwrap_err();
    assert!(e.0.contains("NaN at flat index 1"), "{e}");
    assert!(evaluate(&g, &[]).is_err());
}

#[test]
fn layer_norm_normalizes_the_trailing_dims() {
    let src = "func @f(%x: tensor<2x4xf32>) -> tensor<2x4xf32> {
  %s = const dense<[1.0, 2.0, 1.0, 1.0]> : tensor<4xf32>
  %b = const dense<[0.0, 0.0, 0.0, 10.0]> : tensor<4xf32>
  %y = layer_norm(%x, %s, %b) {epsilon = 0.0} : tensor<2x4xf32>
  return %y
}";
    // Row 1: mean 2.5, variance 1.25; row 2 is row 1 scaled by 10: the same result.
    let x = t(&[2, 4], &[1., 2., 3., 4., 10., 20., 30., 40.]);
    let z = |v: f64| (v - 2.5) / 1.25f64.sqrt();
    let row = [z(1.), 2. * z(2.), z(3.), z(4.) + 10.];
    close(&run(src, &[x]), &[row, row].concat());
}

#[test]
fn gelu_in_both_forms() {
    let src = |mode: &str| {
        format!(
            "func @f(%x: tensor<3xf32>) -> tensor<3xf32> {{
  %y = gelu(%x) {{approximate = \"{mode}\"}} : tensor<3xf32>
  return %y
}}"
        )
    };
    let x = t(&[3], &[-1., 0., 2.]);
    // x·Φ(x): Φ(−1) = 0.158655, Φ(2) = 0.977250.
    close(&run(&src("none"), std::slice::from_ref(&x)), &[-0.158655, 0., 1.954500]);
    // The tanh form: 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))).
    let tanh_form = |v: f64| 0.5 * v * (1. + ((2. / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh());
    close(&run(&src("tanh"), &[x]), &[tanh_form(-1.), 0., tanh_form(2.)]);
}

#[test]
fn an_attention_mask_becomes_an_additive_bias() {
    // BERT's export: the i64 mask to bool, broadcast over the query rows, 0 where kept and the
    // lowest f32 where masked; the softmax then gives masked keys no weight.
    let src = "func @f(%s: tensor<1x2x3xf32>, %m: tensor<1x3xi64>) -> tensor<1x2x3xf32> {
  %b = cast(%m) {to = \"bool\"} : tensor<1x3xbool>
  %u = unsqueeze(%b) {axes = [1]} : tensor<1x1x3xbool>
  %e = expand(%u) {shape = [1, 2, 3]} : tensor<1x2x3xbool>
  %zero = const dense<[0.0]> : tensor<f32>
  %low = const dense<[-3.4028235e38]> : tensor<f32>
  %bias = where(%e, %zero, %low) : tensor<1x2x3xf32>
  %a = add(%s, %bias) : tensor<1x2x3xf32>
  %p = softmax(%a) {axis = -1} : tensor<1x2x3xf32>
  return %p
}";
    let s = t(&[1, 2, 3], &[1., 2., 3., 0., 0., 0.]);
    let m = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[1, 3]), vec![1, 1, 0]).unwrap());
    let e = std::f64::consts::E;
    close(&run(src, &[s, m]), &[1. / (1. + e), e / (1. + e), 0., 0.5, 0.5, 0.]);
}
