"""What a run reports: the line of each epoch, and the summary, figure and card of a finished run."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..fileio import atomic_write_text
from .console import format_seconds

if TYPE_CHECKING:
    from .setup import TrainingRun


def epoch_line(row: dict[str, Any], total_steps: int) -> str:
    text = (f"epoch {row['epoch']:>3}  step {row['step']:>6}/{total_steps}  loss {row['train_loss']:.4f}  "
            f"train err {100 * row['train_error']:5.2f}%")
    if "eval_error" in row:
        text += f"  eval err {100 * row['eval_error']:5.2f}%"
    if "average_eval_error" in row:
        text += f"  averaged ({row['averaged_epochs']}) {100 * row['average_eval_error']:5.2f}%"
    return text + f"  {row['images_per_s']:.0f} img/s  {format_seconds(row['wall_time_s'])}"


def write_summary(run: "TrainingRun") -> None:
    """summary.json, summary.md and the error-curve figure of a finished run."""
    from ..plots import error_curves

    config, state, name = run.config, run.state, run.spec.name
    history = state.history
    if history:
        error_curves({name: history}, run.run_dir / "curves.png", f"{name} on {config.data}")
    last = history[-1] if history else {}
    summary = {
        "model": name, "data": config.data, "recipe": config.recipe, "steps": state.step,
        "epochs": len(history), "final_train_error": last.get("train_error"),
        "final_eval_error": last.get("eval_error"), "best_eval_error": state.best_error,
        "eval_split": config.eval_split, "wall_time_s": state.wall_time_s,
        "images_per_s": (sum(r["images_per_s"] for r in history) / len(history)) if history else None,
        "seed": config.seed,
        "averaged_epochs": last.get("averaged_epochs"), "average_eval_error": last.get("average_eval_error"),
    }
    atomic_write_text(json.dumps(summary, indent=2) + "\n", run.run_dir / "summary.json")
    lines = [f"# {name} on {config.data} ({config.recipe} recipe)", "",
             f"- steps: {state.step:,} ({len(history)} epochs), batch {config.batch_size}, seed {config.seed}",
             f"- wall time: {format_seconds(state.wall_time_s)}"]
    if last.get("eval_error") is not None:
        lines.append(f"- final {config.eval_split} error: {100 * last['eval_error']:.2f}%"
                     f" (best {100 * state.best_error:.2f}%)")
    if last.get("average_eval_error") is not None:
        lines.append(f"- {config.eval_split} error of the weights averaged over the last {last['averaged_epochs']} "
                     f"epochs (averaged.pt): {100 * last['average_eval_error']:.2f}%")
    if last:
        lines.append(f"- final training error: {100 * last['train_error']:.2f}%")
    lines += ["", "![error curves](curves.png)", ""]
    atomic_write_text("\n".join(lines), run.run_dir / "summary.md")
