//! No QIR text makes qc panic: every case file and example, mutated at random (bytes deleted,
//! duplicated, replaced by QIR punctuation or digits), goes through parse, verify and, when it
//! verifies, the evaluator on random inputs (digits are also changed in place, which keeps the text
//! well-formed and moves dims, attributes, scales and zero points) — each either succeeds or returns an error.
//! `QC_SLOW=1` runs 20 000 mutants instead of 1 500.

use qc_ir::eval::evaluate;
use qc_ir::text::parse;
use qc_ir::verify::{VerifyOptions, verify};
use qc_tests::{Rng, fill_random_weights, qir_files, random_inputs, split_cases};
use std::path::Path;

const PIECES: &[&str] = &[
    "%",
    "@",
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    "<",
    ">",
    ",",
    ":",
    "=",
    "x",
    "?",
    "0",
    "-1",
    "99999999999",
    "1e39",
    "nan",
    "!q<i8, 0.5, 0>",
    "tensor<",
    "\"",
    "\n",
];

fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut b: Vec<u8> = text.as_bytes().to_vec();
    for _ in 0..1 + rng.next_u64() % 2 {
        if b.is_empty() {
            break;
        }
        let at = (rng.next_u64() % b.len() as u64) as usize;
        match rng.next_u64() % 4 {
            // Change a digit: dims, attributes, scales and zero points move but stay well-formed.
            3 => {
                let digits: Vec<usize> = b.iter().enumerate().filter(|(_, c)| c.is_ascii_digit()).map(|(i, _)| i).collect();
                if !digits.is_empty() {
                    let i = digits[(rng.next_u64() % digits.len() as u64) as usize];
                    b[i] = b'0' + (rng.next_u64() % 10) as u8;
                }
            }
            0 => {
                let len = (1 + rng.next_u64() % 8) as usize;
                b.drain(at..(at + len).min(b.len()));
            }
            1 => {
                let piece = PIECES[(rng.next_u64() % PIECES.len() as u64) as usize].as_bytes();
                b.splice(at..at, piece.iter().copied());
            }
            _ => {
                let len = (1 + rng.next_u64() % 16) as usize;
                let chunk: Vec<u8> = b[at..(at + len).min(b.len())].to_vec();
                b.splice(at..at, chunk);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

#[test]
fn mutated_qir_never_panics() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds: Vec<String> = Vec::new();
    for path in qir_files(&here.join("cases")).into_iter().chain(qir_files(&here.join("../examples"))) {
        seeds.extend(split_cases(&std::fs::read_to_string(path).unwrap()));
    }
    let n = if std::env::var("QC_SLOW").is_ok() { 20_000 } else { 1_500 };
    let mut rng = Rng::new(2026);
    let (mut parsed, mut verified, mut evaluated) = (0, 0, 0);
    for i in 0..n {
        let text = mutate(&seeds[i % seeds.len()], &mut rng);
        let outcome = std::panic::catch_unwind(|| {
            let mut g = match parse(&text) {
                Ok(g) => g,
                Err(_) => return (false, false, false),
            };
            fill_random_weights(&mut g);
            if verify(&g, VerifyOptions { check_weights: true }).is_err() {
                return (true, false, false);
            }
            let ok = evaluate(&g, &random_inputs(&g, i as u64)).is_ok();
            (true, true, ok)
        });
        match outcome {
            Ok((p, v, e)) => {
                parsed += p as usize;
                verified += v as usize;
                evaluated += e as usize;
            }
            Err(_) => panic!("mutant {i} panicked:\n{text}"),
        }
    }
    println!("{n} mutants: {parsed} parsed, {verified} verified, {evaluated} evaluated");
    assert!(verified > 0 && parsed > verified);
}
