//! The text round-trips: for every `.qir` under `tests/` and `examples/`, each case that parses
//! prints to text that re-parses to an equal graph and prints identically; files meant to be
//! canonical (`examples/`) print exactly as written.

use qc_ir::text::{parse, print};
use qc_tests::{qir_files, split_cases};
use std::path::Path;

fn roots() -> (std::path::PathBuf, std::path::PathBuf) {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    (here.join("cases"), here.join("../examples"))
}

#[test]
fn every_case_round_trips() {
    let (cases, examples) = roots();
    let mut checked = 0;
    for path in qir_files(&cases).into_iter().chain(qir_files(&examples)) {
        let text = std::fs::read_to_string(&path).expect("readable");
        for case in split_cases(&text) {
            let Ok(g) = parse(&case) else { continue };
            if qc_ir::verify::verify(&g, Default::default()).is_err() {
                continue;
            }
            let printed = print(&g);
            let again =
                parse(&printed).unwrap_or_else(|d| panic!("{}: printed text does not parse: {d:?}\n{printed}", path.display()));
            assert!(g.same_as(&again), "{}: re-parsed graph differs\n{printed}", path.display());
            assert_eq!(print(&again), printed, "{}: printing is not stable", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} cases round-tripped");
}

#[test]
fn examples_are_canonical() {
    let (_, examples) = roots();
    let files = qir_files(&examples);
    assert!(files.len() >= 2);
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        let g = parse(&text).unwrap_or_else(|d| panic!("{}: {d:?}", path.display()));
        assert_eq!(print(&g), text, "{} is not canonical", path.display());
    }
}

#[test]
fn floats_round_trip_bit_exact() {
    let values = [0.1f32, 1.0 / 3.0, 1e-38, 3.4028235e38, -0.0, 1.17549435e-38, 7e-45, 0.0472, 123456.79];
    let list: Vec<String> = values.iter().map(|v| qc_ir::types::format_f32(*v)).collect();
    let text = format!(
        "func @f() -> tensor<{}xf32> {{\n  %c = const dense<[{}]> : tensor<{}xf32>\n  return %c\n}}\n",
        values.len(),
        list.join(", "),
        values.len()
    );
    let g = parse(&text).expect("parses");
    assert_eq!(print(&g), text);
    let id = g.producer(g.outputs()[0]).expect("const");
    let Some(qc_ir::ConstValue::Dense(qc_ir::Tensor::F32(a))) = &g.node(id).value else { panic!("dense f32") };
    for (x, y) in a.iter().zip(values) {
        assert_eq!(x.to_bits(), y.to_bits());
    }
}

#[test]
fn any_value_name_round_trips() {
    // Names as exporters write them: a name outside `[A-Za-z0-9_.$]` prints quoted (`%"..."`).
    let names = ["/backbone/conv1/Conv_output_0", "onnx::Conv_123", "Conv@0.bias.bn.q", "x.1", "größe", "a \"b\" \\ c"];
    let text = "func @f(%x: tensor<2xf32>) -> tensor<2xf32> {\n  %y = relu(%x) : tensor<2xf32>\n  return %y\n}\n";
    let mut g = parse(text).expect("parses");
    let x = g.params()[0];
    let y = g.outputs()[0];
    g.value_mut(x).name = Some(names[0].to_string());
    g.value_mut(y).name = Some(names[5].to_string());
    for name in &names[1..5] {
        let mut renamed = g.clone();
        renamed.value_mut(y).name = Some(name.to_string());
        let printed = print(&renamed);
        let again = parse(&printed).unwrap_or_else(|d| panic!("printed text does not parse: {d:?}\n{printed}"));
        assert!(renamed.same_as(&again), "re-parsed graph differs\n{printed}");
    }
    let printed = print(&g);
    assert!(printed.contains(r#"%"/backbone/conv1/Conv_output_0""#), "{printed}");
    let again = parse(&printed).unwrap_or_else(|d| panic!("printed text does not parse: {d:?}\n{printed}"));
    assert!(g.same_as(&again), "re-parsed graph differs\n{printed}");
    assert_eq!(print(&again), printed);
}
