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
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baseline  # noqa: E402
from common import cifar_or_synthetic, machine, write_json  # noqa: E402

import reslab  # noqa: E402
from reslab.data import Normalizer, TrainLoader  # noqa: E402
from reslab.inference import bfloat16_is_fast, frozen_for_inference, optimize_for_inference  # noqa: E402
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


def timed(fn: Callable[[], None]) -> tuple[float, float | None]:
    """Seconds, and the peak resident memory the call added above what the process held before it."""
    reset_peak_rss()
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    return elapsed, None if peak is None or before is None else max(0.0, peak - before)


def alternate(pair: dict[str, Callable[[], None]], repeats: int) -> dict[str, dict]:
    for fn in pair.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in pair}
    peaks: dict[str, list[float]] = {k: [] for k in pair}
    for _ in range(repeats):
        for name, fn in pair.items():
            t, peak = timed(fn)
            times[name].append(t)
            if peak is not None:
                peaks[name].append(peak)
    return {k: {"median_s": statistics.median(v), "runs_s": v, "peak_rss_mb": max(peaks[k]) if peaks[k] else None}
            for k, v in times.items()}


def training_case(depth: int, batch: int, steps: int, repeats: int, data, norm, extra_paths: bool = False) -> dict:
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
                x, y = next_ours()
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
        paths["reslab_compiled"] = reslab_steps(torch.compile(fresh()))  # compiles in the warm-up pass
    result = alternate(paths, repeats)
    images = steps * batch
    return _ratio(result, images, f"train resnet{depth} batch {batch}", "images/s")


def _cycle(dataloader):
    while True:
        yield from dataloader


def inference_case(name: str, depth_model: Callable, ours_model, batch: int, size: int, repeats: int,
                   iters: int, label: str) -> dict:
    x = torch.randn(batch, 3, size, size)
    base = depth_model().eval()
    eager = optimize_for_inference(ours_model.eval())
    frozen = frozen_for_inference(ours_model.eval(), x)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def run_baseline() -> None:
        with torch.no_grad():
            for _ in range(iters):
                base(x)

    def run_frozen() -> None:
        with torch.inference_mode():
            for _ in range(iters):
                frozen(x_cl)

    def run_eager() -> None:
        with torch.inference_mode():
            for _ in range(iters):
                eager(x_cl)

    # reslab: frozen TorchScript (BN folded, oneDNN); also its eager BN-folded path, the same in
    # bfloat16 where the CPU has bf16 instructions (outputs rounded: opt-in), and ONNX Runtime.
    pair = {"baseline": run_baseline, "reslab": run_frozen, "reslab_eager_folded": run_eager}
    if bfloat16_is_fast():
        half = optimize_for_inference(ours_model.eval(), "bfloat16")

        def run_bf16() -> None:
            with torch.inference_mode():
                for _ in range(iters):
                    half(x_cl)

        pair["reslab_bf16"] = run_bf16
    onnx = _onnx_runner(eager, x, iters)
    if onnx is not None:
        pair["reslab_onnxruntime"] = onnx
    result = alternate(pair, repeats)
    return _ratio(result, batch * iters, label, "images/s")


def _onnx_runner(model, x, iters):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import io

    buffer = io.BytesIO()
    torch.onnx.export(model, (x.contiguous(),), buffer, input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}}, opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    feed = {"images": x.numpy()}

    def run() -> None:
        for _ in range(iters):
            session.run(None, feed)

    return run


def _ratio(result: dict, work: int, label: str, unit: str) -> dict:
    out = {"case": label, "unit": unit}
    for name, r in result.items():
        out[name] = {"per_s": work / r["median_s"], "median_s": r["median_s"], "runs_s": r["runs_s"],
                     "peak_rss_mb": r["peak_rss_mb"]}
    base = out["baseline"]["per_s"]
    for name in result:
        if name != "baseline":
            out[name]["ratio"] = out[name]["per_s"] / base
    return out


def latency_case(depth: int, repeats: int, iters: int) -> dict:
    r = inference_case(f"resnet{depth}", lambda: baseline.resnet(depth), reslab.create_model(f"resnet{depth}"),
                       1, 32, repeats, iters, f"latency resnet{depth} batch 1")
    r["unit"] = "ms/image"
    for k, v in r.items():
        if isinstance(v, dict):
            v["ms"] = 1000 / v["per_s"]
    return r


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
        step(*next(batches))
    categories = {"convolution": 0.0, "batch norm": 0.0, "elementwise (relu, add, pad)": 0.0, "optimizer": 0.0,
                  "data (gather, normalise)": 0.0, "other ops": 0.0}
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with torch.profiler.record_function("data"):
                x, y = next(batches)
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
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "speed.json"))
    args = parser.parse_args()
    quick = args.quick
    repeats = 1 if quick else args.repeats
    data, source = cifar_or_synthetic(args.data_root, n=2048 if quick else 45_000)
    norm = Normalizer.fit(data.images[:5000])
    depths = [int(d) for d in args.depths.split(",")]
    cases = []
    for depth in depths:
        steps = 2 if quick else max(4, int(40 * 20 / depth))
        cases.append(training_case(depth, 128, steps, repeats, data, norm, extra_paths=depth == 20))
        print(_line(cases[-1]), flush=True)
    for depth in [d for d in depths if d in (20, 56)]:
        cases.append(inference_case(f"resnet{depth}", lambda d=depth: baseline.resnet(d),
                                    reslab.create_model(f"resnet{depth}"), 256, 32, repeats,
                                    1 if quick else 4, f"inference resnet{depth} batch 256"))
        print(_line(cases[-1]), flush=True)
        cases.append(latency_case(depth, repeats, 5 if quick else 100))
        print(_line(cases[-1]), flush=True)
    # ResNet-50 at 224x224: the "usual code" here is a plain eval-mode forward of the same network.
    cases.append(inference_case("resnet50", lambda: reslab.create_model("resnet50"), reslab.create_model("resnet50"),
                                2 if quick else 16, 224, repeats, 1 if quick else 3, "inference resnet50 224x224 batch 16"))
    print(_line(cases[-1]), flush=True)
    prof = profile_step(data, norm, 2 if quick else 5)
    rate = gemm_rate()
    flops = summarize("resnet20").flops
    floor = {"gemm_mult_adds_per_s": rate, "resnet20_forward_mult_adds": flops,
             "training_mult_adds_per_image": 3 * flops,
             "training_images_per_s_floor": rate / (3 * flops), "inference_images_per_s_floor": rate / flops}
    result = {"benchmark": "speed", "data": source, "repeats": repeats, "quick": quick, "machine": machine(),
              "cases": cases, "profile_resnet20_step": prof, "arithmetic_floor": floor}
    write_json(result, Path(args.out))
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
