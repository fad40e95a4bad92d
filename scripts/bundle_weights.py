#!/usr/bin/env python3
"""Maintainers' tool: copy a finished run's best model into reslab/weights/ with its model card.

    python scripts/bundle_weights.py RUN_DIR NAME --command "reslab train ..." --machine "..." \
        --data-note "..." [--data-root DATA] [--averaged]

``--averaged`` bundles the run's weight average (``averaged.pt``, from ``average_from``) instead of
its best epoch.

Writes reslab/weights/<data>-<NAME>.pt (model, architecture, classes, normalisation; no optimizer),
its SHA-256 into reslab/weights/index.json, and a model card reslab/weights/<file>.md.

The accuracy on the card is measured again on the bundled file itself, in float32 and with flip
test-time augmentation, so it holds for what users load even when training evaluated under bf16
autocast (``cpu_bf16``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reslab.models.pretrained import WEIGHTS_DIR, sha256  # noqa: E402
from reslab.data import EvalLoader, ImageArrays  # noqa: E402
from reslab.errors import ReslabError  # noqa: E402
from reslab.fileio import atomic_write_text  # noqa: E402
from reslab.inference import with_test_time_augmentation  # noqa: E402
from reslab.checkpoint import (Checkpoint, checkpoint_dataset, load_checkpoint,  # noqa: E402
                                     mirrored_in_training, save_checkpoint)
from reslab.train.setup import read_run_facts  # noqa: E402
from reslab.train.evaluate import evaluate  # noqa: E402
from reslab.train.history import read_history  # noqa: E402


def teacher_names(sources: list[str]) -> str:
    """The teacher's bundled name, file name, or run folder (for a run's best.pt or last.pt); each
    member's for an ensemble (``resnet56+resnet20``)."""
    def name(source: str) -> str:
        path = Path(source)
        return path.parent.name if path.name in ("best.pt", "last.pt") else path.name

    return "+".join(name(source) for source in sources)


def short_shas(shas: list[str]) -> str:
    """The first 12 hex digits of each SHA-256, as the card shows them."""
    return "+".join(f"{sha[:12]}..." for sha in shas)


def measure(checkpoint: Checkpoint, arrays: ImageArrays, tta: str):
    model = with_test_time_augmentation(checkpoint.build_model(), tta)
    return evaluate(model, EvalLoader(arrays, 500, checkpoint.normalizer), len(checkpoint.classes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("name")
    parser.add_argument("--command", required=True, help="the exact command that trained it")
    parser.add_argument("--machine", required=True)
    parser.add_argument("--data-note", required=True, help="what the training data was")
    parser.add_argument("--data-root", help="where the training data lives (default: as recorded in the run)")
    parser.add_argument("--averaged", action="store_true",
                        help="bundle averaged.pt (the run's weight average) instead of best.pt")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR, help="default: the package's weights folder")
    args = parser.parse_args()
    try:
        bundle(args)
    except ReslabError as exc:
        sys.exit(f"error: {exc}")


def bundle(args: argparse.Namespace) -> None:
    """Check the run, write the weights (measured on the file itself) and index entry, then the card."""
    if not (args.run_dir / "summary.json").exists():
        raise ReslabError(f"{args.run_dir}: not a finished run (no summary.json)")
    summary = json.loads((args.run_dir / "summary.json").read_text())
    run_history = read_history(args.run_dir)  # every epoch of the run, for the card's curve
    chosen, history = chosen_checkpoint(args, run_history, summary)
    if not chosen.config.get("eval_split"):
        raise ReslabError(f"{args.run_dir}: the run was not evaluated (eval_split none); nothing to put on a card")
    arrays = checkpoint_dataset(chosen, None, args.data_root, chosen.config["eval_split"])
    flips = mirrored_in_training(chosen, arrays)
    filename, plain, flipped, entry = write_weights(args, chosen, history, arrays, flips)
    card = card_text(args, chosen, summary, run_history, history[-1], filename, entry["sha256"], plain, flipped)
    atomic_write_text(card, args.weights_dir / entry["card"])
    print(f"wrote {args.weights_dir / filename} and its card")


def chosen_checkpoint(args: argparse.Namespace, run_history: list[dict], summary: dict) -> tuple[Checkpoint, list[dict]]:
    """The checkpoint to bundle (the best epoch's, or with --averaged the weight average) and the history
    it carries, after checking it is the one the run's files describe."""
    if args.averaged:
        chosen = load_checkpoint(args.run_dir / "averaged.pt")
        # The average of the run's last epoch, or the card's epochs and accuracy would describe another.
        epochs = int(chosen.progress.get("epoch", 0))
        if epochs != len(run_history) or "average_eval_error" not in run_history[-1]:
            raise ReslabError(f"{args.run_dir}: averaged.pt is not the weight average of the run's last epoch")
        return chosen, run_history
    chosen = load_checkpoint(args.run_dir / "best.pt")
    history = chosen.progress["history"]  # up to the best epoch: best.pt was saved then
    # best.pt must be this run's best epoch: a best.pt from elsewhere, or one left behind when the run was
    # killed between writing last.pt and best.pt, would put the wrong epoch's weights under this card.
    if run_history[:len(history)] != history or history[-1].get("eval_error") != summary.get("best_eval_error"):
        raise ReslabError(f"{args.run_dir}: best.pt is not the best epoch of the run that metrics.jsonl and "
                          "summary.json describe")
    return chosen, history


def write_weights(args: argparse.Namespace, chosen: Checkpoint, history: list[dict], arrays: ImageArrays,
                  flips: bool | None):
    """The slim checkpoint (no optimizer) in the weights folder and its index.json entry; returns the file
    name, its measured float32 (and flip) results and the entry."""
    c = chosen.config
    slim = Checkpoint(spec=chosen.spec, classes=chosen.classes, normalizer=chosen.normalizer,
                      input_size=chosen.input_size, model_state=chosen.model_state,
                      progress={"step": chosen.progress["step"], "history": history}, config=c,
                      trained_with_flips=flips)
    data = Path(c["data"]).name
    filename = f"{data}-{args.name}.pt"
    # Measure the file users will load, and only then replace the bundled one: a failure on the
    # way leaves the old file and its index entry as they were.
    staged = save_checkpoint(slim, args.weights_dir / (filename + ".new"))
    try:
        bundled = load_checkpoint(staged)
        plain = measure(bundled, arrays, "none")
        flipped = measure(bundled, arrays, "flip") if flips else None
        digest = sha256(staged)
        os.replace(staged, args.weights_dir / filename)
    finally:
        staged.unlink(missing_ok=True)
    index_path = args.weights_dir / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    entry = {"file": filename, "sha256": digest, "card": filename[:-3] + ".md", "data": data,
             "val_accuracy": round(1 - plain.error, 4), "epoch": history[-1]["epoch"]}
    if flipped is not None:
        entry["val_accuracy_flip_tta"] = round(1 - flipped.error, 4)
    index[args.name] = entry
    atomic_write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", index_path)
    return filename, plain, flipped, entry


def percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def curve_table(run_history: list[dict]) -> str:
    """The card's training curve: train and val error per epoch (and the average's, when the run averaged)."""
    averaging = any("average_eval_error" in r for r in run_history)
    head = ("| epoch | train error % | val error % |" + (" averaged weights' val error % |" if averaging else "")
            + "\n|---|---|---|" + ("---|" if averaging else ""))
    rows = "\n".join(f"| {r['epoch']} | {percent(r['train_error'])} | {percent(r.get('eval_error'))} |"
                     + (f" {percent(r.get('average_eval_error'))} |" if averaging else "") for r in run_history)
    return f"{head}\n{rows}"


def which_weights(args: argparse.Namespace, c: dict, run_history: list[dict], best_row: dict) -> str:
    if args.averaged:
        first = next(r["epoch"] for r in run_history if "averaged_epochs" in r)
        return (f"The weights are the mean of those at the ends of epochs {first}-{best_row['epoch']} of "
                f"{len(run_history)} (stochastic weight averaging, `average_from` {c['average_from']}), their BN "
                f"statistics measured again on the last epoch's augmented training batches "
                f"({100 * (1 - best_row['average_eval_error']):.2f}% on `{c['eval_split']}` then")
    return (f"The weights are those of epoch {best_row['epoch']} of {len(run_history)}, the best on "
            f"`{c['eval_split']}` during training ({100 * (1 - best_row['eval_error']):.2f}% then")


def recipe_extras(run_dir: Path, c: dict) -> str:
    """Cutout, the teacher and the start file, as the run recorded them."""
    facts = read_run_facts(run_dir)
    teacher, start = facts.get("teacher", []), facts.get("init_from")
    return "".join([
        f"; cutout {c['cutout']}x{c['cutout']}" if c.get("cutout") else "",
        f"; distilled from `{teacher_names([m['source'] for m in teacher])}` (SHA-256 "
        f"{short_shas([m['sha256'] for m in teacher])}, weight {c['distill_weight']}, T {c['distill_temperature']}, "
        f"teacher mode {c.get('teacher_mode', 'online')})" if teacher else "",
        f"; started from the weights of `{Path(c['init_from']).name}`"
        + (f" (SHA-256 {start['sha256'][:12]}...)" if start else "") if c.get("init_from") else "",
    ])


def trained_in_bf16(run_dir: Path, config: dict) -> bool:
    """What the run trained in: run.json records what ``cpu_bf16: auto`` chose; older runs said true or false."""
    facts = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    return bool(facts.get("cpu_bf16", config.get("cpu_bf16") is True))


def card_text(args: argparse.Namespace, chosen: Checkpoint, summary: dict, run_history: list[dict], best_row: dict,
              filename: str, digest: str, plain, flipped) -> str:
    c, data = chosen.config, Path(chosen.config["data"]).name
    tta_note = (f"; {100 * (1 - flipped.error):.2f}% with flip test-time augmentation (`--tta flip`)"
                if flipped is not None else "; trained without mirror images, so no flip test-time augmentation")
    which, extras = which_weights(args, c, run_history, best_row), recipe_extras(args.run_dir, c)
    curve = curve_table(run_history)
    bf16 = trained_in_bf16(args.run_dir, c)
    return f"""# {args.name} on {data} (bundled with reslab)

- **Architecture**: {chosen.spec.name}, {sum(v.numel() for k, v in chosen.model_state.items() if 'running' not in k and 'num_batches' not in k):,} parameters, shortcut option {chosen.spec.shortcut}
- **Data**: {args.data_note}
- **Split**: trained on `{c['train_split']}`, selected and measured on `{c['eval_split']}` (val_fraction {c['val_fraction']}: per class, the last {100 * c['val_fraction']:g}% in file order)
- **Validation accuracy**: {100 * (1 - plain.error):.2f}% (top-5 {100 * (1 - plain.top5_error):.2f}%) on the {int(plain.count):,} `{c['eval_split']}` images, float32, this file{tta_note}. {which}{', measured under bf16 autocast' if bf16 else ''})
- **Recipe**: `{c['recipe']}`: {c['optimizer']} lr {c['lr']} ({c['schedule']}, warm-up {c.get('warmup', c.get('warmup_fraction'))}), momentum {c['momentum']}, nesterov {c['nesterov']}, weight decay {c['weight_decay']} (BN/bias exempt: {c['no_decay_bn_bias']}), label smoothing {c['label_smoothing']}, batch {c['batch_size']}, {f"{c['iterations']:,} iterations" if c.get('iterations') else f"{c['epochs']:g} epochs"}; {'bfloat16 autocast (`cpu_bf16`)' if bf16 else 'float32'} training{extras}
- **Command**: `{args.command}`
- **Seed**: {c['seed']}
- **Wall time**: {summary['wall_time_s'] / 60:.1f} minutes on {args.machine}
- **Classes**: {', '.join(chosen.classes)}
- **Preprocessing**: {chosen.input_size}x{chosen.input_size} {'RGB' if chosen.spec.in_channels == 3 else f'{chosen.spec.in_channels}-channel'}; `(x / 255 - mean) / std` per channel with mean {[round(v, 4) for v in chosen.normalizer.mean.tolist()]}, std {[round(v, 4) for v in chosen.normalizer.std.tolist()]}; images of other sizes are resized (shorter side) and centre-cropped by `reslab predict`
- **File**: `{filename}`, SHA-256 `{digest}`, checked on every load

## Training curve

{curve}
"""


if __name__ == "__main__":
    main()
