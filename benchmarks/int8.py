"""int8 inference two ways, on the bundled models: ONNX Runtime's quantizer (what reslab ships,
reslab/quantize.py) and PyTorch's PT2E flow with torchao's X86InductorQuantizer, compiled by inductor.

For each: top-1 accuracy on the CIFAR-10 validation split (5k images), batch-256 images/s and batch-1
latency (paths timed in turn, medians of the rounds), beside the eager float32 model (NCHW, the usual code) and ONNX Runtime in float32. Both
int8 flows quantize the BN-folded model, calibrated on the same 256 seeded training images.

    taskset -c 0 python benchmarks/int8.py --data-root DATA [--models resnet20,resnet56] [--threads 1]

PT2E needs ``pip install torchao`` and a C++ compiler (inductor); it is skipped without them.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_json  # noqa: E402

from reslab.checkpoint import checkpoint_dataset  # noqa: E402
from reslab.data.augment import preprocess_eval  # noqa: E402
from reslab.inference import fold_batchnorm  # noqa: E402
from reslab.models.blocks import BasicBlock  # noqa: E402
from reslab.models.pretrained import pretrained_checkpoint  # noqa: E402
from reslab.onnxio import OnnxRuntimeModel, onnx_bytes  # noqa: E402
from reslab.quantize import calibration_images, quantize  # noqa: E402


def accuracy(model, images: torch.Tensor, labels: torch.Tensor, normalizer, batch: int = 500) -> float:
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = preprocess_eval(images[start:start + batch], normalizer)
            correct += int((model(x).argmax(1) == labels[start:start + batch]).sum())
    return correct / len(images)


def alternating_times(paths: dict, x: torch.Tensor, rounds: int, calls: int) -> dict[str, float]:
    """Seconds per call of each path on ``x``: the median over ``rounds`` rounds, each timing ``calls``
    calls of every path in turn (after a warm-up call each), so that a busy machine's slow spells fall
    on all paths alike."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    with torch.inference_mode():
        for model in paths.values():
            model(x)
        for _ in range(rounds):
            for name, model in paths.items():
                time.sleep(0.2)  # the previous path's thread pool goes idle (see speed.settle)
                start = time.perf_counter()
                for _ in range(calls):
                    model(x)
                times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(v) for name, v in times.items()}


def with_functional_relus(model: torch.nn.Module) -> torch.nn.Module:
    """The same network with each basic block's ReLUs called as functions. reslab's blocks call one
    ``nn.ReLU`` module twice; the X86InductorQuantizer then finds a module partition with two outputs
    and refuses the graph ("Input partition has more than one output node")."""
    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)

    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, BasicBlock):
            module.forward = types.MethodType(forward, module)
    return model


def pt2e_int8(folded: torch.nn.Module, calibration: torch.Tensor, shapes: list[torch.Tensor], reduce_range: bool):
    """torchao's PT2E static quantization for x86 (per-channel int8 weights, uint8 activations,
    histogram calibration), lowered by inductor with frozen weights; compiled once per input shape.
    ``reduce_range``: 7-bit activations, torchao's advice for CPUs without VNNI."""
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    inductor_config.freezing = True  # constant weights: inductor prepacks them for oneDNN int8 kernels
    model = with_functional_relus(folded).eval()
    batch = torch.export.Dim("batch", min=1)
    graph = torch.export.export(model, (calibration[:2],), dynamic_shapes=({0: batch},)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config(reduce_range=reduce_range))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for chunk in calibration.split(32):
            prepared(chunk)
    converted = convert_pt2e(prepared)
    compiled = torch.compile(converted, dynamic=False)
    start = time.perf_counter()
    with torch.no_grad():
        for x in shapes:
            compiled(x)
    return compiled, time.perf_counter() - start


def measure(name: str, data_root: str | None, quick: bool, with_pt2e: bool) -> dict:
    checkpoint = pretrained_checkpoint(name)
    val = checkpoint_dataset(checkpoint, "cifar10", data_root, "val")
    images, labels = (val.images[:500], val.labels[:500]) if quick else (val.images, val.labels)
    calibration, source = calibration_images(checkpoint, data_root=data_root)
    normalizer = checkpoint.normalizer
    x256 = preprocess_eval(images[:256], normalizer)
    x1 = x256[:1]
    folded = fold_batchnorm(checkpoint.build_model())
    calibration_x = preprocess_eval(calibration, normalizer)
    paths = {"eager_fp32": checkpoint.build_model(),
             "onnxruntime_fp32": OnnxRuntimeModel(onnx_bytes(folded, x256[:2]))}
    start = time.perf_counter()
    paths["onnxruntime_int8"] = OnnxRuntimeModel(quantize(checkpoint, calibration))
    seconds = {"onnxruntime_int8": time.perf_counter() - start}
    if with_pt2e:
        eval_batch = preprocess_eval(images[:500], normalizer)
        for reduce_range in (False, True):
            path = "pt2e_int8_inductor" + ("_7bit_activations" if reduce_range else "")
            paths[path], seconds[path] = pt2e_int8(folded, calibration_x, [eval_batch, x256, x1], reduce_range)
    rounds, latency_calls = (2, 10) if quick else (7, 30)
    batch = alternating_times(paths, x256, rounds, 1)
    single = alternating_times(paths, x1, rounds, latency_calls)
    out = {"model": name, "calibration": source, "val_images": len(images), "rounds": rounds, "paths": {}}
    for path, model in paths.items():
        out["paths"][path] = {"top1": accuracy(model, images, labels, normalizer), "batch256_per_s": 256 / batch[path],
                              "batch1_ms": 1000 * single[path], "prepare_s": seconds.get(path)}
        print(f"{name:<9} {path:<36} top-1 {100 * out['paths'][path]['top1']:6.2f}%  "
              f"{256 / batch[path]:7.0f} img/s (batch 256)  {1000 * single[path]:6.2f} ms (batch 1)", flush=True)
    base = out["paths"]["eager_fp32"]
    for values in out["paths"].values():
        values["batch256_ratio"] = values["batch256_per_s"] / base["batch256_per_s"]
        values["batch1_ratio"] = base["batch1_ms"] / values["batch1_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root")
    parser.add_argument("--models", default="resnet20")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--quick", action="store_true", help="500 validation images, few repeats")
    parser.add_argument("--no-pt2e", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "int8.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with_pt2e = not args.no_pt2e and shutil.which("cc") is not None
    try:
        import torchao  # noqa: F401
    except ImportError:
        with_pt2e = False
        print("torchao is not installed: PT2E skipped", file=sys.stderr)
    results = [measure(name, args.data_root, args.quick, with_pt2e) for name in args.models.split(",")]
    import onnxruntime

    versions = {"onnxruntime": onnxruntime.__version__}
    if with_pt2e:
        import torchao

        versions["torchao"] = torchao.__version__
    write_json({"benchmark": "int8", "quick": args.quick, "machine": machine(), "threads": args.threads,
                "versions": versions, "results": results}, Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
