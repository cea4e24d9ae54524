#!/usr/bin/env python3
"""Side-by-side latency of qc's JIT and ONNX Runtime on the corpus digits models, one thread,
batch 1 and 64, both timed at the same boundary (f32 input in, f32 output out), interleaved in
one run. Needs `pip install onnxruntime numpy` and a release build of qc:

    cargo build --release -p qc && python3 bench/vs_onnxruntime.py [--runs N]

For each model, qc compiles the fp32 ONNX file with --calib (static int8) and is compared with
ONNX Runtime's fp32 model and its best int8 variant (by latency) from the corpus."""

import argparse, json, os, re, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "..", "shared", "corpus")
QC = os.path.join(ROOT, "target", "release", "qc")


def ort_latency(path, x, runs):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    for _ in range(10):
        s.run(None, {name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def qc_latency(model, x_path, batch, runs):
    out = subprocess.run([QC, "bench", model, "--input", x_path, "--batch", str(batch), "--runs", str(runs)],
                         check=True, capture_output=True, text=True).stdout
    return float(re.search(r"jit\s+([0-9.]+) ms", out).group(1)) / 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    import numpy as np
    results = json.load(open(os.path.join(CORPUS, "results.json")))["models"]
    x_path = os.path.join(CORPUS, "data", "digits_test_x.npy")
    x_all = np.load(x_path).astype(np.float32)
    tmp = tempfile.mkdtemp()
    print(f"{'model':<14} {'batch':>5} {'qc int8 ms':>11} {'ORT fp32 ms':>12} {'ORT int8 ms':>12} {'qc / best ORT':>14}")
    for base in ["digits_mlp", "digits_cnn", "digits_resdw"]:
        qir = os.path.join(tmp, base + ".qir")
        subprocess.run([QC, "compile", os.path.join(CORPUS, "models", base + "_fp32.onnx"), "--calib",
                        os.path.join(CORPUS, "data", "digits_calib_x.npy"), "-o", qir], check=True, capture_output=True)
        present = [k for k in results if k.startswith(base + "_qdq_") and os.path.exists(os.path.join(CORPUS, "models", k + ".onnx"))]
        int8 = sorted(present, key=lambda k: results[k]["latency_b1_median_ms"])[0]
        for batch in [1, 64]:
            x = x_all[:batch]
            ours = qc_latency(qir, x_path, batch, args.runs)
            fp32 = ort_latency(os.path.join(CORPUS, "models", base + "_fp32.onnx"), x, args.runs)
            q8 = ort_latency(os.path.join(CORPUS, "models", int8 + ".onnx"), x, args.runs)
            print(f"{base:<14} {batch:>5} {ours*1e3:>11.4f} {fp32*1e3:>12.4f} {q8*1e3:>12.4f} {ours/min(fp32, q8):>13.2f}x")


if __name__ == "__main__":
    sys.exit(main())
