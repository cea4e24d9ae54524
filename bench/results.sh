#!/usr/bin/env bash
# Regenerates bench/RESULTS.md from the benchmark commands, on this machine, now:
#   - the machine: CPU model, the ISA levels it runs, qc's level;
#   - the GEMM kernels against ndarray's f32 GEMM (cargo bench -p qc-codegen --bench gemm);
#   - qc bench on the corpus models compiled to int8, batch 1 and 64;
#   - qc and ONNX Runtime side by side in one process (bench/ort), when the onnxruntime wheel is
#     installed.
# Usage: bench/results.sh [RUNS]   (RUNS: timed runs per measurement; 300 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-300}"
corpus=../shared/corpus
out=bench/RESULTS.md
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cargo build --release -p qc --quiet
# ONNX Runtime's library: ORT_DYLIB_PATH, else the wheel of python3 or of the zoo's venv.
ort_lib="${ORT_DYLIB_PATH:-}"
if [ -z "$ort_lib" ]; then
  for py in python3 "${QC_ZOO:-$HOME/.cache/qc-zoo}/venv/bin/python"; do
    if dir="$("$py" -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))' 2>/dev/null)"; then
      ort_lib="$(ls "$dir"/capi/libonnxruntime.so* 2>/dev/null | head -1)"
      [ -n "$ort_lib" ] && break
    fi
  done
fi
qc=target/release/qc
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
flags="$(grep -o -w -E 'avx512_?vnni|avx_vnni|avx512bw|avx2' /proc/cpuinfo | sort -u | paste -sd ' ')"

{
  echo "# Benchmark results"
  echo
  echo "Written by \`bench/results.sh $runs\` on $(date -u +%Y-%m-%d), one thread: do not edit by hand."
  echo
  echo "- CPU: $cpu (${flags:-no AVX2}), $(nproc) cores; qc's ISA level: $("$qc" bench examples/mlp.qir --runs 1 | sed -nE 's/.*ISA level ([^ ]+) on .*/\1/p')"
  echo "- qc $(git describe --always --dirty)"
  echo
  echo "## GEMM kernels"
  echo
  echo "\`cargo bench -p qc-codegen --bench gemm\` (medians; the f32 GEMM is ndarray's, in the same run):"
  echo
  echo '```'
  cargo bench -p qc-codegen --bench gemm --quiet 2>/dev/null | grep -v '^$'
  echo '```'
  echo
  echo "## Corpus models, int8, \`qc bench\`"
  echo
  echo "Compiled with \`qc compile MODEL_fp32.onnx --calib digits_calib_x.npy\`; \`qc bench --runs $runs\` on the test inputs (median ms, with the 10th and 90th percentiles)."
  echo
  echo "| model | batch | ISA level | JIT ms (p10–p90) | evaluator ms | kernels | compile ms |"
  echo "|---|---|---|---|---|---|---|"
  for m in digits_mlp digits_cnn digits_resdw; do
    "$qc" compile "$corpus/models/${m}_fp32.onnx" --calib "$corpus/data/digits_calib_x.npy" -o "$tmp/$m.qir" 2>/dev/null
    for b in 1 64; do
      "$qc" bench "$tmp/$m.qir" --input "$corpus/data/digits_test_x.npy" --batch "$b" --runs "$runs" --against interp > "$tmp/bench.txt"
      head_line="$(head -1 "$tmp/bench.txt")"
      level="$(sed -E 's/.*ISA level ([^ ]+) on .*/\1/' <<< "$head_line")"
      kernels="$(sed -E 's/.*batch [0-9]+, ([0-9]+) JIT kernels.*/\1/' <<< "$head_line")"
      compile="$(sed -E 's/.*compiled in ([0-9.]+) ms.*/\1/' <<< "$head_line")"
      jit="$(grep -m1 '^  jit' "$tmp/bench.txt" | sed -E 's/^ *jit +([0-9.]+) ms .*under ([0-9.]+) ms, 10 % over ([0-9.]+) ms.*/\1 (\2–\3)/')"
      interp="$(grep -m1 '^  interp' "$tmp/bench.txt" | awk '{print $2}')"
      echo "| $m | $b | $level | $jit | $interp | $kernels | $compile |"
    done
  done
  echo
  echo "## qc and ONNX Runtime in one process"
  echo
  if [ -n "$ort_lib" ]; then
    echo "\`cd bench/ort && cargo run --release -- $runs\` (one thread each, f32 in and out, runs interleaved; median ms):"
    echo
    echo '```'
    (cd bench/ort && ORT_DYLIB_PATH="$ort_lib" cargo run --release --quiet -- "$runs" 2>/dev/null)
    echo '```'
  else
    echo "Not measured: the onnxruntime wheel is not installed (\`pip install onnxruntime\`)."
  fi
} > "$tmp/RESULTS.md"
mv "$tmp/RESULTS.md" "$out"
echo "wrote $out"
