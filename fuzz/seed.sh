#!/usr/bin/env bash
# Seeds each fuzz target's corpus from the repository's tests and examples and the shared corpus.
# Usage: fuzz/seed.sh   (from the repository root or anywhere)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
c="$root/fuzz/corpus"
mkdir -p "$c/qir" "$c/compile_run" "$c/onnx" "$c/weights" "$c/npy"
i=0
for f in $(find "$root/tests/cases" "$root/examples" -name '*.qir' | sort); do
  # Case files hold several cases; seed with each.
  awk -v out="$c/qir/seed" -v n="$i" 'BEGIN{k=0} /^\/\/ -----/{k++; next} {print > (out "-" n "-" k ".qir")}' "$f"
  i=$((i+1))
done
cp "$c"/qir/* "$c/compile_run/"
shared="$root/../shared/corpus"
if [ -d "$shared" ]; then
  for m in digits_mlp_fp32 digits_cnn_fp32 digits_cnn_qdq_pre_u8s8_minmax digits_mlp_dyn_s8_pc; do
    cp "$shared/models/$m.onnx" "$c/onnx/" 2>/dev/null || true
  done
  head -c 4096 "$shared/data/digits_calib_y.npy" > "$c/npy/labels.npy" || true
  cp "$shared/data/digits_calib_y.npy" "$c/npy/" 2>/dev/null || true
fi
for f in "$root"/examples/*.safetensors; do cp "$f" "$c/weights/"; done
# A compressed weights file made by qc itself.
if [ -x "$root/target/release/qc" ]; then
  "$root/target/release/qc" pack "$root/examples/digits_mlp_int8.qir" -o "$c/.packed.qir" > /dev/null && mv "$c/.packed.qcw" "$c/weights/mlp.qcw" && rm -f "$c/.packed.qir"
fi
echo "seeded $(find "$c" -type f | wc -l) files under $c"
