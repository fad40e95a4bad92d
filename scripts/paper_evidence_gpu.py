#!/usr/bin/env python3
"""The paper's CIFAR evidence at the paper's budget, on one GPU, in one command.

    python scripts/paper_evidence_gpu.py --data-root DATA [--out runs/evidence-full] [--jobs 8]

Runs, into one experiment folder (so the members they share train once):
  1. ``reslab experiment table6 --protocol full`` at depths 20, 32, 44, 56, 110 (5 seeds each),
  2. ``reslab experiment degradation --protocol full`` at depths 20, 32, 44, 56 (2 seeds; its ResNets
     are table6's seeds 0 and 1, already trained),
  3. ``reslab experiment shortcuts --protocol full`` at depth 20 (2 seeds),
each member 64k iterations of the paper's recipe (Sec. 4.2), bf16 autocast (``amp``, reslab's CUDA
default), ``--jobs`` members at a time as separate processes sharing the GPU: one CIFAR net at
batch 128 leaves most of a large GPU idle, several side by side keep it busy.

``torch.compile`` is used only where it pays: before training, a probe times the training step of
ResNet-20 and ResNet-110 eager and compiled on this GPU (``probe.json`` in the folder) and compiles
only if the compiled step is at least ``--compile-gain`` times faster for both.

Interrupt it at any time: rerunning the same command resumes every member (and skips the probe).
Commit the folder without checkpoints (``*.pt``) to keep the evidence; reports are rebuilt from it
with ``reslab experiment NAME --protocol full --report-only --out FOLDER``.

``--smoke`` runs the whole script on the CPU on scikit-learn's digits at a tiny budget, to test it
where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TABLE6_DEPTHS = "20,32,44,56,110"
DEGRADATION_DEPTHS = "20,32,44,56"  # the paper's Fig. 6 plain nets stop at 56
PROBE_STEPS = 30


def probe_compile(device: str, batch: int = 128) -> dict[str, float]:
    """Seconds per training step, eager and compiled, for ResNet-20 and ResNet-110 under bf16 autocast."""
    import torch

    import reslab

    timings: dict[str, float] = {}
    for name in ("resnet20", "resnet110"):
        for compiled in (False, True):
            model = reslab.create_model(name).to(device, memory_format=torch.channels_last)
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            forward = torch.compile(model) if compiled else model
            x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (batch,), device=device)

            def step() -> None:
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    loss = torch.nn.functional.cross_entropy(forward(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            for _ in range(5):  # compiles, autotunes, warms up
                step()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(PROBE_STEPS):
                step()
            torch.cuda.synchronize()
            timings[f"{name} {'compiled' if compiled else 'eager'}"] = (time.perf_counter() - start) / PROBE_STEPS
    return timings


def decide_compile(out: Path, device: str, min_gain: float) -> bool:
    path = out / "probe.json"
    if path.exists():
        probe = json.loads(path.read_text())
    else:
        timings = probe_compile(device)
        gains = {n: timings[f"{n} eager"] / timings[f"{n} compiled"] for n in ("resnet20", "resnet110")}
        probe = {"seconds_per_step": timings, "gain": gains, "compile": min(gains.values()) >= min_gain}
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(probe, indent=1) + "\n")
    print(f"torch.compile: {'yes' if probe['compile'] else 'no'} (gain {probe['gain']})", flush=True)
    return bool(probe["compile"])


def experiment(name: str, args: argparse.Namespace, common: list[str], *extra: str) -> None:
    command = [sys.executable, "-m", "reslab", "experiment", name, *common, *extra]
    print("$ " + " ".join(command), flush=True)
    status = subprocess.call(command)
    if status != 0:
        sys.exit(status)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", help="folder with CIFAR-10 (downloaded there if absent)")
    parser.add_argument("--out", default="runs/evidence-full")
    parser.add_argument("--jobs", type=int, default=8, help="members trained at once on the GPU")
    parser.add_argument("--compile-gain", type=float, default=1.15)
    parser.add_argument("--smoke", action="store_true", help="CPU, digits, tiny budget: test the script")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.smoke:
        length = ["--recipe", "paper", "--budget", "0.0005"]
        common = ["--data", "digits", "--set", "device=cpu", "--set", "batch_size=64"]
        depths6, depths_deg, use_compile = "8,14", "8,14", False
    else:
        import torch

        if not torch.cuda.is_available():
            sys.exit("paper_evidence_gpu.py: no CUDA device here (use --smoke to test the script on the CPU)")
        length = ["--protocol", "full"]
        common = ["--data", "cifar10", "--set", "device=cuda"]
        if args.data_root:
            common += ["--data-root", args.data_root]
        depths6, depths_deg = TABLE6_DEPTHS, DEGRADATION_DEPTHS
        use_compile = decide_compile(out, "cuda", args.compile_gain)
    common += [*length, "--jobs", str(args.jobs), "--out", str(out), "--quiet",
               "--set", f"compile={str(use_compile).lower()}"]
    seeds = ["--seeds", "1"] if args.smoke else []  # else the protocol's
    experiment("table6", args, common, "--depths", depths6, *seeds)
    experiment("degradation", args, common, "--depths", depths_deg, *seeds)
    experiment("shortcuts", args, common, "--depth", depths_deg.split(",")[0], *seeds)
    print(f"reports: {out}/table6.md, {out}/degradation.md, {out}/shortcuts.md")


if __name__ == "__main__":
    main()
