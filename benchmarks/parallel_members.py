"""Experiment members one at a time on every core, or side by side on a core each: which finishes first?

An experiment's members are independent trainings, and ``reslab experiment --jobs N`` runs N at once,
each with its share of the cores (reslab/analysis/members.py). On a 2-core CPU the question is whether
two members with one thread each finish sooner than the same two trained in turn with two threads:
small CIFAR nets do not keep two threads fully busy (thread start-up and synchronisation at every
layer), so running them side by side may pay.

Measured with the real command: ``reslab experiment table6`` at one depth, two seeds, a fraction of an
epoch of the medium protocol's training (fast recipe, BN decayed), once with ``--jobs 1`` and once with
``--jobs 2``, each into a fresh folder. Reported: the wall time of each command and their ratio, and
each member's own training time (summary.json). One run of each, in the order given by ``--order``.

    python benchmarks/parallel_members.py --data-root DATA [--depth 56] [--budget 0.0125]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_json  # noqa: E402


def run_experiment(jobs: int, depth: int, budget: float, data_root: str | None, out: Path) -> dict:
    command = [sys.executable, "-m", "reslab", "experiment", "table6", "--depths", str(depth), "--seeds", "2",
               "--recipe", "fast", "--budget", str(budget), "--set", "no_decay_bn_bias=false",
               "--jobs", str(jobs), "--data", "cifar10", "--out", str(out), "--quiet"]
    if data_root:
        command += ["--data-root", data_root]
    start = time.perf_counter()
    if subprocess.run(command, stdout=subprocess.DEVNULL).returncode != 0:  # reslab said why, one line
        sys.exit(f"parallel_members.py: the experiment with --jobs {jobs} failed (see above)")
    wall = time.perf_counter() - start
    members = {}
    for summary in sorted((out / "members").glob("*/summary.json")):
        facts = json.loads(summary.read_text())
        members[summary.parent.name] = {"wall_time_s": facts["wall_time_s"],
                                        "val_error": facts["final_eval_error"]}
    return {"jobs": jobs, "command_wall_s": wall, "members": members}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root")
    parser.add_argument("--depth", type=int, default=56)
    parser.add_argument("--budget", type=float, default=0.0125, help="fraction of the fast recipe's 40 epochs")
    parser.add_argument("--order", default="2,1", choices=["2,1", "1,2"], help="which --jobs to run first")
    parser.add_argument("--out", default="benchmarks/results/parallel_members.json")
    args = parser.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for jobs in (int(j) for j in args.order.split(",")):
            runs[jobs] = run_experiment(jobs, args.depth, args.budget, args.data_root, Path(tmp) / f"jobs{jobs}")
            print(f"--jobs {jobs}: {runs[jobs]['command_wall_s']:.0f} s", flush=True)
    ratio = runs[1]["command_wall_s"] / runs[2]["command_wall_s"]
    print(f"two members side by side finish {ratio:.2f}x as fast as in turn")
    write_json({"depth": args.depth, "budget": args.budget, "seeds": 2, "runs": list(runs.values()),
                "speedup_jobs2_over_jobs1": ratio, "machine": machine()}, Path(args.out))


if __name__ == "__main__":
    main()
