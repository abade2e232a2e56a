"""onnxruntime against PyTorch for one 128x128 face on the CPU, with the shipped model.

    python bench/bench_onnx.py [--threads 2] [--repeats 7] [--onnx FILE.onnx] [--model FILE]

The model is exported at its fixed size (as `python -m utils.training.export_model MODEL OUT.onnx` does;
--onnx reuses a file made before) and run by onnxruntime's CPU provider; PyTorch runs the same model with
the compiled `cpp` scan and with the pure-PyTorch `torch` scan. The runs alternate, so a busy machine slows
each alike; the figures are the best of --repeats after one warm-up run each, in seconds, and the ratio
to PyTorch with the `cpp` scan. The last line is the largest difference between onnxruntime's and
PyTorch's outputs.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402 (needs ROOT on sys.path)
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from data.image_tensor import to_tensor  # noqa: E402
from models import HybriMamba  # noqa: E402
from models.onnx_friendly import INPUT, export_onnx, require  # noqa: E402
from models.pretrained import SHIPPED_MODEL  # noqa: E402
from utils.demo.faces import astronaut_face  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(SHIPPED_MODEL), help="a .safetensors model (default: the shipped one)")
    p.add_argument("--onnx", default=None, help="an ONNX file exported from --model before (default: export now)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of both runtimes (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=7, help="timed runs of each, alternating (default: %(default)s)")
    args = p.parse_args(argv)
    ort = require("onnxruntime", "this benchmark")
    torch.set_num_threads(args.threads)
    size = 128
    face = Image.fromarray(astronaut_face(size)).resize((16, 16), Image.BICUBIC).resize((size, size), Image.BICUBIC)
    x = to_tensor(np.asarray(face))[None]
    models = {backend: HybriMamba.from_pretrained(args.model, scan_backend=backend) for backend in ("cpp", "torch")}
    with tempfile.TemporaryDirectory() as folder:
        path = args.onnx or export_onnx(models["cpp"], Path(folder) / "model.onnx", size=size)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    runs = {"PyTorch, cpp scan": lambda: models["cpp"](x), "PyTorch, torch scan": lambda: models["torch"](x),
            "onnxruntime": lambda: session.run(None, {INPUT: x.numpy()})}
    timings = {name: [] for name in runs}
    with torch.inference_mode():
        for run in runs.values():
            run()  # warm-up: builds the cpp scan, plans onnxruntime's memory
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                timings[name].append(time.perf_counter() - start)
        diff = np.abs(session.run(None, {INPUT: x.numpy()})[0] - models["cpp"](x).numpy()).max()
    base = min(timings["PyTorch, cpp scan"])
    print(f"one {size}x{size} face, {Path(args.model).name}, {args.threads} CPU threads, best of {args.repeats}:")
    for name, times in timings.items():
        print(f"  {name:<20} {min(times):7.3f} s   {min(times) / base:5.2f}x PyTorch (cpp scan)")
    print(f"max |onnxruntime - PyTorch| = {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
