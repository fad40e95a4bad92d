"""reslab vs the usual PyTorch ResNet code (benchmarks/baseline.py), side by side in one run.

Cases: training images/s for ResNet-20/56/110 at batch 128 (also the ``fast`` recipe's batch; for
ResNet-20 also with bf16 autocast and with torch.compile);
inference images/s at batch 256 and single-image latency for ResNet-20/56; ResNet-50 at 224x224
inference; peak memory of each. Baseline and reslab alternate within each case, after warm-up,
and the medians of the repetitions are reported with their ratio. Also: a profile of one ResNet-20
training step by op category, and the arithmetic floor (FLOPs / measured GEMM rate).

    python benchmarks/speed.py [--quick] [--repeats 3] [--out benchmarks/results/speed.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baseline  # noqa: E402
from common import cifar_or_synthetic, machine, write_json  # noqa: E402

import reslab  # noqa: E402
from reslab.data import Normalizer, TrainLoader  # noqa: E402
from reslab.inference import (  # noqa: E402
    bfloat16_is_fast,
    compiled_for_inference,
    frozen_for_inference,
    has_cxx_compiler,
    optimize_for_inference,
)
from reslab.models.pretrained import available_pretrained, pretrained_checkpoint  # noqa: E402
from reslab.summary import summarize  # noqa: E402


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
    except OSError:
        pass


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def settle() -> None:
    """Let the previous path's worker threads go idle. OpenMP's and ONNX Runtime's pools spin for a
    while after each call, and a pool spinning on both cores took up to half the next path's time
    (ONNX Runtime int8 measured 2,995 images/s right after PyTorch paths, 5,137 alone)."""
    time.sleep(0.2)


def alternate(pair: dict[str, Callable[[], None]], repeats: int) -> dict[str, dict]:
    for fn in pair.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in pair}
    for _ in range(repeats):
        for name, fn in pair.items():
            settle()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: {"median_s": statistics.median(v), "runs_s": v} for k, v in times.items()}


@dataclass
class Case:
    """One benchmark case: the callables to time side by side, and how much work one call does."""
    label: str
    unit: str  # "images/s" or "ms/image"
    work: int  # images per call
    paths: dict[str, Callable[[], None]]  # "baseline" first, then "reslab", then other reslab paths


def training_case(depth: int, batch: int, steps: int, data, norm, extra_paths: bool = False) -> Case:
    """Baseline vs reslab's training step; with ``extra_paths`` also bf16 autocast and torch.compile."""
    base_model = baseline.resnet(depth)
    base_opt = torch.optim.SGD(base_model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    base_batches = iter(_cycle(baseline.loader(data.images, data.labels, norm.mean, norm.std, batch)))
    loader = TrainLoader(data, batch, norm, seed=0)
    state = {"epoch": 0, "it": loader.epoch(0)}

    def next_ours():
        try:
            return next(state["it"])
        except StopIteration:
            state["epoch"] += 1
            state["it"] = loader.epoch(state["epoch"])
            return next(state["it"])

    def reslab_steps(model, autocast: bool = False) -> Callable[[], None]:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True)

        def run() -> None:
            # reslab.train.loop's step: no host sync inside the loop, one at the end.
            model.train()
            total = torch.zeros(())
            for _ in range(steps):
                x, y = next_ours()[:2]
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach()
            float(total)

        return run

    def fresh():
        return reslab.create_model(f"resnet{depth}").to(memory_format=torch.channels_last)

    def run_baseline() -> None:
        baseline.train_steps(base_model, base_batches, base_opt, steps)

    paths = {"baseline": run_baseline, "reslab": reslab_steps(fresh())}
    if extra_paths:
        if bfloat16_is_fast():
            paths["reslab_bf16_autocast"] = reslab_steps(fresh(), autocast=True)
        if shutil.which("cc") or shutil.which("gcc"):  # inductor compiles C++ on CPU
            paths["reslab_compiled"] = reslab_steps(torch.compile(fresh()))  # compiles in the warm-up pass
    return Case(f"train resnet{depth} batch {batch}", "images/s", steps * batch, paths)


def _cycle(dataloader):
    while True:
        yield from dataloader


def inference_case(depth_model: Callable, ours_model, batch: int, size: int, iters: int, label: str,
                   unit: str = "images/s") -> Case:
    x = torch.randn(batch, 3, size, size)
    base = depth_model().eval()
    eager = optimize_for_inference(ours_model.eval())
    frozen = frozen_for_inference(ours_model.eval(), x)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def run_baseline() -> None:
        with torch.no_grad():
            for _ in range(iters):
                base(x)

    def repeated(model) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for _ in range(iters):
                    model(x_cl)
        return run

    def autocast(model) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                for _ in range(iters):
                    model(x_cl)
        return run

    # reslab: frozen TorchScript (BN folded, oneDNN); also its eager BN-folded path, the same in
    # bfloat16 (weights cast, and under autocast) where the CPU has bf16 instructions (outputs
    # rounded: opt-in), both through torch.compile (`--compile`; compiled in the warm-up call) where
    # a C++ compiler is at hand, and ONNX Runtime in float32 and int8 (reslab/quantize.py).
    pair = {"baseline": run_baseline, "reslab": repeated(frozen), "reslab_eager_folded": repeated(eager)}
    if has_cxx_compiler():
        pair["reslab_compiled"] = repeated(compiled_for_inference(optimize_for_inference(ours_model.eval())))
    if bfloat16_is_fast():
        pair["reslab_bf16"] = repeated(optimize_for_inference(ours_model.eval(), "bfloat16"))
        pair["reslab_bf16_autocast"] = autocast(eager)
        if has_cxx_compiler():
            pair["reslab_bf16_compiled"] = repeated(
                compiled_for_inference(optimize_for_inference(ours_model.eval(), "bfloat16")))
    pair.update(_onnx_runners(ours_model, x, iters))
    return Case(label, unit, batch * iters, pair)


def _onnx_runners(model, x, iters) -> dict[str, Callable[[], None]]:
    """ONNX Runtime on the BN-folded model exported in float32, and on its int8 quantization (what
    ``--precision int8`` runs). Calibrated on random images: the speed does not depend on the values."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return {}
    from reslab.inference import fold_batchnorm
    from reslab.onnxio import OnnxRuntimeModel, onnx_bytes
    from reslab.quantize import quantize_model

    folded = fold_batchnorm(model)
    calibration = torch.randn(16, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    sessions = {"reslab_onnxruntime": OnnxRuntimeModel(onnx_bytes(folded, calibration[:2])),
                "reslab_int8": OnnxRuntimeModel(quantize_model(folded, calibration))}

    def repeated(session: OnnxRuntimeModel) -> Callable[[], None]:
        feed = {session.input_name: x.contiguous().numpy()}

        def run() -> None:
            for _ in range(iters):
                session.session.run(None, feed)
        return run

    return {name: repeated(session) for name, session in sessions.items()}


def build_case(key: str, quick: bool, data_root: str | None) -> Case:
    """Cases by key ("train:20", "infer:20", "latency:20", "infer50") so a probe process can rebuild one."""
    kind, _, arg = key.partition(":")
    if kind == "train":
        depth = int(arg)
        data, norm = _data(quick, data_root)
        steps = 2 if quick else max(4, int(40 * 20 / depth))
        return training_case(depth, 128, steps, data, norm, extra_paths=depth == 20)
    if kind in ("infer", "latency"):
        depth = int(arg)
        # Trained weights where reslab bundles them: int8 kernels' speed depends on the values (an
        # untrained ResNet-20 quantized ran at a quarter of the trained one's rate in ONNX Runtime).
        name = f"resnet{depth}"
        model = pretrained_checkpoint(name).build_model() if name in available_pretrained() else reslab.create_model(name)
        if kind == "infer":
            return inference_case(lambda: baseline.resnet(depth), model, 256, 32, 1 if quick else 4,
                                  f"inference resnet{depth} batch 256")
        return inference_case(lambda: baseline.resnet(depth), model, 1, 32, 5 if quick else 100,
                              f"latency resnet{depth} batch 1", unit="ms/image")
    if kind == "infer50":
        # ResNet-50 at 224x224: the "usual code" here is a plain eval-mode forward of the same network.
        return inference_case(lambda: reslab.create_model("resnet50"), reslab.create_model("resnet50"),
                              2 if quick else 16, 224, 1 if quick else 3, "inference resnet50 224x224 batch 16")
    raise ValueError(f"unknown case {key!r}")


_DATA: dict = {}
PROBE_TIMEOUT_S = 900


def _data(quick: bool, data_root: str | None):
    if "data" not in _DATA:
        data, source = cifar_or_synthetic(data_root, n=2048 if quick else 45_000)
        _DATA.update(data=data, source=source, norm=Normalizer.fit(data.images[:5000]))
    return _DATA["data"], _DATA["norm"]


def time_case(case: Case, repeats: int) -> dict:
    result = alternate(case.paths, repeats)
    out = {"case": case.label, "unit": case.unit}
    for name, r in result.items():
        out[name] = {"per_s": case.work / r["median_s"], "median_s": r["median_s"], "runs_s": r["runs_s"]}
        if case.unit == "ms/image":
            out[name]["ms"] = 1000 / out[name]["per_s"]
    base = out["baseline"]["per_s"]
    for name in result:
        if name != "baseline":
            out[name]["ratio"] = out[name]["per_s"] / base
    return out


def probe_memory(key: str, path: str, quick: bool, data_root: str | None) -> dict | None:
    """In a fresh process: build the case, then run only ``path`` twice (the first call is its
    warm-up, which for the compiled path includes compiling) and report its peak resident memory
    above what the process held before it ran, and the process's whole peak. None off Linux."""
    case = build_case(key, quick, data_root)
    reset_peak_rss()
    before = _status_mb("VmRSS")
    case.paths[path]()
    case.paths[path]()
    peak = _status_mb("VmHWM")
    if peak is None or before is None:
        return None
    return {"rss_before_mb": before, "peak_rss_mb": peak, "peak_added_mb": peak - before}


def measure_memory(key: str, paths: list[str], quick: bool, data_root: str | None) -> dict[str, dict]:
    """Each path's memory from its own process (a shared process would reuse what others freed)."""
    out = {}
    for path in paths:
        command = [sys.executable, __file__, "--probe", key, path, "--threads", str(torch.get_num_threads())] + \
                  (["--quick"] if quick else []) + (["--data-root", data_root] if data_root else [])
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"memory probe {key} {path}: no result within {PROBE_TIMEOUT_S} s", file=sys.stderr)
            continue
        lines = run.stdout.strip().splitlines()
        if run.returncode != 0 or not lines:
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"memory probe {key} {path} failed: {last}", file=sys.stderr)
            continue
        memory = json.loads(lines[-1])
        if memory is not None:
            out[path] = memory
    return out


def profile_step(data, norm, steps: int = 5) -> dict:
    """Self CPU time of one ResNet-20 training step by category (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    model = reslab.create_model("resnet20").to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=True)
    loader = TrainLoader(data, 128, norm, seed=0)
    batches = loader.epoch(0)

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step(*next(batches)[:2])
    categories = {"convolution": 0.0, "batch norm": 0.0, "elementwise (relu, add, pad)": 0.0, "optimizer": 0.0,
                  "data (gather, normalise)": 0.0, "other ops": 0.0}
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with torch.profiler.record_function("data"):
                x, y = next(batches)[:2]
            step(x, y)
    wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    for e in events:
        name = e.key
        t = e.self_cpu_time_total / 1e6 / steps
        if name == "data" or name.startswith("ProfilerStep"):
            continue
        if "conv" in name or "mkldnn" in name:
            categories["convolution"] += t
        elif "batch_norm" in name:
            categories["batch norm"] += t
        elif name.startswith("aten::_foreach") or "Optimizer" in name or "sgd" in name.lower():
            categories["optimizer"] += t
        elif any(k in name for k in ("relu", "threshold", "add", "pad", "cat", "slice", "mean", "fill", "zero",
                                     "mul", "div", "sub")):
            categories["elementwise (relu, add, pad)"] += t
        elif any(k in name for k in ("index", "gather", "randint", "randperm", "rand", "copy_", "to", "where", "arange")):
            categories["data (gather, normalise)"] += t
        else:
            categories["other ops"] += t
    accounted = sum(categories.values())
    categories["python / framework overhead (wall - ops)"] = max(0.0, wall - accounted)
    return {"wall_s_per_step": wall, "categories_s": categories}


def gemm_rate() -> float:
    """Measured float32 multiply-adds per second of a large square matmul (this machine, these threads)."""
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    reps = 10
    for _ in range(reps):
        a @ b
    return reps * n ** 3 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the script runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-root")
    parser.add_argument("--depths", default="20,56,110")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-path memory probes")
    parser.add_argument("--inference-only", action="store_true", help="only the inference and latency cases")
    parser.add_argument("--threads", type=int, help="torch (and ONNX Runtime) threads (default: torch's)")
    parser.add_argument("--probe", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "speed.json"))
    args = parser.parse_args()
    quick = args.quick
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(probe_memory(*args.probe, quick, args.data_root)))
        return
    repeats = 1 if quick else args.repeats
    depths = [int(d) for d in args.depths.split(",")]
    keys = [] if args.inference_only else [f"train:{d}" for d in depths]
    keys += [f"{kind}:{d}" for d in depths if d in (20, 56) for kind in ("infer", "latency")]
    keys.append("infer50")
    cases = []
    for key in keys:
        case = build_case(key, quick, args.data_root)
        result = time_case(case, repeats)
        del case  # free this case's models before the next one is built
        if not args.no_memory:
            for path, memory in measure_memory(key, [k for k in result if isinstance(result[k], dict)], quick,
                                               args.data_root).items():
                result[path]["memory"] = memory
        cases.append(result)
        print(_line(cases[-1]), flush=True)
    prof = None
    if not args.inference_only:
        data, norm = _data(quick, args.data_root)
        prof = profile_step(data, norm, 2 if quick else 5)
    rate = gemm_rate()
    flops = summarize("resnet20").flops
    floor = {"gemm_mult_adds_per_s": rate, "resnet20_forward_mult_adds": flops,
             "training_mult_adds_per_image": 3 * flops,
             "training_images_per_s_floor": rate / (3 * flops), "inference_images_per_s_floor": rate / flops}
    result = {"benchmark": "speed", "data": _DATA.get("source", "random images (inference only)"),
              "repeats": repeats, "quick": quick, "machine": machine(), "cases": cases,
              "profile_resnet20_step": prof, "arithmetic_floor": floor}
    write_json(result, Path(args.out))
    if prof:
        print(f"\nprofile of one ResNet-20 training step ({1000 * prof['wall_s_per_step']:.0f} ms):")
        for k, v in prof["categories_s"].items():
            print(f"  {k:<44}{1000 * v:8.1f} ms {100 * v / prof['wall_s_per_step']:5.1f}%")
    print(f"GEMM {rate / 1e9:.1f} G mult-adds/s -> floor {floor['training_images_per_s_floor']:.0f} train img/s, "
          f"{floor['inference_images_per_s_floor']:.0f} inference img/s for ResNet-20")
    print(f"wrote {args.out}")


def _line(case: dict) -> str:
    parts = [f"{case['case']:<40}"]
    for name, v in case.items():
        if isinstance(v, dict):
            value = f"{v['ms']:.2f} ms" if "ms" in v else f"{v['per_s']:.0f}/s"
            ratio = f" ({v['ratio']:.2f}x)" if "ratio" in v else ""
            parts.append(f"{name} {value}{ratio}")
    return "  ".join(parts)


if __name__ == "__main__":
    main()
