"""Render benchmark JSON results as the markdown tables of docs/performance.md.

    python benchmarks/report.py benchmarks/results/speed.json benchmarks/results/data_pipeline.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def speed_tables(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['processor']}, {m['cpus']} CPUs, {m['platform']}; torch {m['torch']}, "
             f"{m['threads']} threads. Data: {result['data']}. Median of {result['repeats']} alternating repetitions "
             "after warm-up.", "",
             "| case | baseline | reslab | ratio | other reslab paths | memory, baseline / reslab |",
             "|---|---|---|---|---|---|"]
    for case in result["cases"]:
        ms = case["unit"] == "ms/image"

        def value(entry: dict) -> str:
            return f"{entry['ms']:.2f} ms" if ms else f"{entry['per_s']:.0f} img/s"

        others = ", ".join(f"{k.removeprefix('reslab_')}: {value(v)} ({v['ratio']:.2f}x{_memory(v, ', ')})"
                           for k, v in case.items() if isinstance(v, dict) and k not in ("baseline", "reslab"))
        peaks = " / ".join(_memory(case[k]) or "?" for k in ("baseline", "reslab"))
        lines.append(f"| {case['case']} | {value(case['baseline'])} | {value(case['reslab'])} | "
                     f"**{case['reslab']['ratio']:.2f}x** | {others} | {peaks} |")
    prof = result["profile_resnet20_step"]
    if prof:  # None in an --inference-only run
        wall = prof["wall_s_per_step"]
        lines += ["", f"Profile of one ResNet-20 training step at batch 128 ({1000 * wall:.0f} ms, torch.profiler self "
                      "CPU time by op category, mean of the profiled steps):", "", "| where | ms | share |",
                  "|---|---|---|"]
        for k, v in prof["categories_s"].items():
            lines.append(f"| {k} | {1000 * v:.1f} | {100 * v / wall:.1f}% |")
    f = result["arithmetic_floor"]
    lines += ["", f"Arithmetic floor: a 1024x1024 float32 matmul runs at {f['gemm_mult_adds_per_s'] / 1e9:.1f} G "
                  f"multiply-adds/s here. ResNet-20 needs {f['resnet20_forward_mult_adds'] / 1e6:.1f} M per image forward "
                  f"and about 3x that to train (forward + two backward products), so at GEMM speed it would train "
                  f"{f['training_images_per_s_floor']:.0f} img/s and infer {f['inference_images_per_s_floor']:.0f} img/s."]
    return "\n".join(lines)


def _memory(entry: dict, prefix: str = "") -> str:
    """Peak RSS the path added in its own process (and the process's whole peak) in MB; "" if unmeasured."""
    m = entry.get("memory")
    return f"{prefix}{m['peak_added_mb']:.0f} ({m['peak_rss_mb']:.0f}) MB" if m else ""


def memory_note() -> str:
    return ("Memory: each path run alone in a fresh process (`--probe`): the peak resident memory it added "
            "above the process after set-up, and in brackets the process's whole peak (Python, torch, data, "
            "models). The baseline's DataLoader workers are separate processes, not counted.")


def data_table(result: dict) -> str:
    return "\n".join([
        f"Data: {result['data']}; batch {result['batch_size']}; median of {result['repeats']} alternating passes of "
        f"{result['batches_timed']} batches.", "",
        "| pipeline | ms / batch | s / epoch | share of a ResNet-20 step |", "|---|---|---|---|",
        f"| reslab (in-memory uint8, one gather per batch) | {1000 * result['reslab_s_per_batch']:.2f} | "
        f"{result['reslab_s_per_epoch']:.1f} | {100 * result['reslab_data_fraction_of_step']:.2f}% |",
        f"| per-sample Dataset + DataLoader(2 workers) | {1000 * result['baseline_s_per_batch']:.2f} | "
        f"{result['baseline_s_per_epoch']:.1f} | {100 * result['baseline_data_fraction_of_step']:.1f}% |",
        "", f"Speed-up {result['speedup']:.1f}x; one ResNet-20 training step (batch 128) took "
            f"{1000 * result['resnet20_train_step_s']:.0f} ms."])


def int8_table(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['processor']}, {m['cpus']} CPUs; torch {m['torch']}, {result['threads']} thread(s); "
             + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".", "",
             "| model | path | top-1 (val) | batch 256 | ratio | batch 1 | ratio |", "|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        for path, v in r["paths"].items():
            lines.append(f"| {r['model']} | {path} | {100 * v['top1']:.2f}% | {v['batch256_per_s']:.0f} img/s | "
                         f"{v['batch256_ratio']:.2f}x | {v['batch1_ms']:.2f} ms | {v['batch1_ratio']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    for path in sys.argv[1:]:
        result = json.loads(Path(path).read_text())
        if result["benchmark"] == "int8":
            print(int8_table(result))
        elif result["benchmark"] != "speed":
            print(data_table(result))
        else:
            measured = any("memory" in v for case in result["cases"] for v in case.values() if isinstance(v, dict))
            print(speed_tables(result) + ("\n\n" + memory_note() if measured else ""))
        print()


if __name__ == "__main__":
    main()
