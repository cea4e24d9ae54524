#!/usr/bin/env bash
# A YOLOv8n detector (ultralytics' architecture from its config, random seeded weights; nothing
# downloaded but the package) exported to ONNX at 320×320 with its box-decoding head, with two
# inputs and ONNX Runtime's outputs on them, for compiler/tests/zoo.rs. Uses the zoo's venv
# (../shared/zoo/build makes it; it has torch and onnxruntime) and adds `ultralytics` to it.
# Writes $QC_ZOO/extra/yolov8n_320.onnx, yolov8n_320_x.npy, yolov8n_320_y.npy.
set -euo pipefail
zoo="${QC_ZOO:-$HOME/.cache/qc-zoo}"
py="${QC_ZOO_VENV:-$zoo/venv}/bin/python"
[ -x "$py" ] || { echo "no zoo venv at $py: run ../shared/zoo/build first" >&2; exit 1; }
"$py" -c "import ultralytics" 2>/dev/null || "$py" -m pip install --quiet ultralytics
mkdir -p "$zoo/extra"
cd "$zoo/extra"
"$py" - <<'PY'
import numpy as np, onnxruntime as ort, torch
from ultralytics import YOLO
torch.manual_seed(0)
net = YOLO("yolov8n.yaml").model.eval()
class Boxes(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m
    def forward(self, x):
        return self.m(x)[0]  # [N, 84, 2100]: decoded boxes and class scores
torch.onnx.export(Boxes(net), torch.rand(1, 3, 320, 320), "yolov8n_320.onnx", opset_version=17,
                  input_names=["images"], output_names=["output0"], dynamo=False)
x = np.random.RandomState(0).rand(2, 3, 320, 320).astype(np.float32)
s = ort.InferenceSession("yolov8n_320.onnx", providers=["CPUExecutionProvider"])
np.save("yolov8n_320_x.npy", x)
np.save("yolov8n_320_y.npy", np.concatenate([s.run(None, {"images": x[i:i + 1]})[0] for i in range(len(x))]))
print("wrote yolov8n_320.onnx and its inputs and outputs")
PY
