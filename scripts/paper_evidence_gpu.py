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

Interrupt it at any time (Ctrl-C, or SIGINT to this script alone: ``timeout -s INT``): each running
member saves a checkpoint, and rerunning the same command resumes every member (and skips the probe).
Commit the folder without checkpoints (``*.pt``) to keep the evidence; reports are rebuilt from it
with ``reslab experiment NAME --protocol full --report-only --out FOLDER``.

A shorter run for a GPU lent for minutes, not hours (the full protocol is many GPU-hours of members):
``--protocol medium`` (the CPU protocol that shows Table 6 and Fig. 7: 10 epochs of ``fast``, BN
decayed), ``--budget 0.1`` (6.4k iterations of the paper's recipe), ``--recipe fast --budget 0.5``
(20 epochs), ``--depths 20,32,44,56``, ``--seeds 3``, ``--experiments table6``. A run with any of
these is no longer the full protocol, and its reports say which recipe and budget they come from.

``--smoke`` runs the whole script on the CPU on scikit-learn's digits at a tiny budget, to test it
where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reslab.analysis.protocols import PROTOCOLS  # noqa: E402 - after the path is set

TABLE6_DEPTHS = "20,32,44,56,110"
EXPERIMENTS = ("table6", "degradation", "shortcuts")
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
        try:
            timings = probe_compile(device)
        except Exception as exc:  # noqa: BLE001 - no compiler, a Triton failure...: train eager, say why
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            probe = {"compile": False, "gain": None, "error": f"{type(exc).__name__}: {reason}"}
        else:
            gains = {n: timings[f"{n} eager"] / timings[f"{n} compiled"] for n in ("resnet20", "resnet110")}
            probe = {"seconds_per_step": timings, "gain": gains, "compile": min(gains.values()) >= min_gain}
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(probe, indent=1) + "\n")
    why = f"gain {probe['gain']}" if probe.get("gain") else probe.get("error", "")
    print(f"torch.compile: {'yes' if probe['compile'] else 'no'} ({why})", flush=True)
    return bool(probe["compile"])


def experiment(name: str, common: list[str], *extra: str) -> None:
    """Run one ``reslab experiment`` and exit with its status if it fails (130 when interrupted)."""
    command = [sys.executable, "-m", "reslab", "experiment", name, *common, *extra]
    print("$ " + " ".join(command), flush=True)
    # The experiment runs in its own session and hears every SIGINT through this script, exactly once:
    # the terminal's Ctrl-C would otherwise reach it twice (directly and forwarded), and a second one
    # kills members without their checkpoints; a SIGINT sent to this script alone (``timeout -s INT``)
    # would not reach it at all. Waiting for it lets the members save (at most a minute).
    child = subprocess.Popen(command, cwd=ROOT, start_new_session=True)

    def forward(_signum, _frame) -> None:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGINT, forward)
    try:
        status = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    if status != 0:
        sys.exit(130 if status == -signal.SIGINT else status)


def prepare_cifar10(data_root: str | None) -> None:
    """Download and extract CIFAR-10 once, before members start side by side and each look for it."""
    from reslab.data import DataOptions, load_dataset

    load_dataset("cifar10", "train", DataOptions(root=data_root))


def length_arguments(protocol: str | None, recipe: str | None, budget: float | None) -> list[str]:
    """How long each member trains, as ``reslab experiment`` arguments: a named protocol (``full``
    unless told), or a recipe cut to a budget (the paper's, whole, unless told). A budget given is
    passed on whatever it is (0 included) for reslab's own check, never read as "not given"."""
    if recipe is not None or budget is not None:
        return ["--recipe", recipe or "paper", "--budget", str(1 if budget is None else budget)]
    return ["--protocol", protocol or "full"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", help="folder with CIFAR-10 (downloaded there if absent)")
    parser.add_argument("--out", default="runs/evidence-full")
    parser.add_argument("--jobs", type=int, default=8, help="members trained at once on the GPU")
    parser.add_argument("--compile-gain", type=float, default=1.15)
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS),
                        help="a named protocol instead of full (medium: 10 epochs of fast, BN decayed)")
    parser.add_argument("--recipe", help="instead of the full protocol: this recipe (default paper with --budget)")
    parser.add_argument("--budget", type=float, help="instead of the full protocol: this fraction of the recipe")
    parser.add_argument("--depths", help=f"ResNet depths (default {TABLE6_DEPTHS}; degradation: up to 56)")
    parser.add_argument("--seeds", type=int, help="seeds per network (default: the protocol's)")
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS),
                        help=f"which to run, in this order (default {','.join(EXPERIMENTS)})")
    parser.add_argument("--smoke", action="store_true", help="CPU, digits, tiny budget: test the script")
    args = parser.parse_args(argv)
    chosen = [e for e in args.experiments.split(",") if e]
    if not chosen or any(e not in EXPERIMENTS for e in chosen):
        parser.error(f"--experiments: choose from {', '.join(EXPERIMENTS)}, got {args.experiments!r}")
    if args.depths is not None and not all(d.strip().isdigit() for d in args.depths.split(",")):
        parser.error(f"--depths: comma-separated whole numbers, got {args.depths!r}")
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds: must be 1 or more, got {args.seeds}")
    if args.protocol and (args.recipe or args.budget is not None):
        parser.error("--protocol fixes the recipe and budget; give either it or --recipe/--budget")
    if args.protocol and args.smoke:
        parser.error("--smoke runs at its own tiny budget; --protocol is for the GPU run")
    out = Path(args.out)
    if args.smoke:
        length = length_arguments(None, args.recipe, 0.0005 if args.budget is None else args.budget)
        common = ["--data", "digits", "--set", "device=cpu", "--set", "batch_size=64"]
        depths6, use_compile = args.depths or "8,14", False
    else:
        import torch

        if not torch.cuda.is_available():
            sys.exit("paper_evidence_gpu.py: no CUDA device here (use --smoke to test the script on the CPU)")
        length = length_arguments(args.protocol, args.recipe, args.budget)
        common = ["--data", "cifar10", "--set", "device=cuda"]
        if args.data_root:
            common += ["--data-root", args.data_root]
        prepare_cifar10(args.data_root)
        depths6 = args.depths or TABLE6_DEPTHS
        use_compile = decide_compile(out, "cuda", args.compile_gain)
        # Each member compiles in its own process; inductor's workers default to one per core each.
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "2")
    depths_deg = ",".join(d for d in depths6.split(",") if int(d) <= 56) or depths6  # Fig. 6's plain nets stop at 56
    common += [*length, "--jobs", str(args.jobs), "--out", str(out), "--quiet",
               "--set", f"compile={str(use_compile).lower()}"]
    seeds = ["--seeds", str(args.seeds or 1)] if args.smoke or args.seeds is not None else []  # else the protocol's
    runs = {"table6": ["--depths", depths6], "degradation": ["--depths", depths_deg],
            "shortcuts": ["--depth", depths_deg.split(",")[0]]}
    for name in chosen:
        experiment(name, common, *runs[name], *seeds)
    print("reports: " + ", ".join(f"{out}/{name}.md" for name in chosen))


if __name__ == "__main__":
    main()
