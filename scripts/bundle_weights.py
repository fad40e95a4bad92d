#!/usr/bin/env python3
"""Maintainers' tool: copy a finished run's best model into reslab/weights/ with its model card.

    python scripts/bundle_weights.py RUN_DIR NAME --command "reslab train ..." --machine "..." \
        --data-note "..." [--data-root DATA]

Writes reslab/weights/<data>-<NAME>.pt (model, architecture, classes, normalisation; no optimizer),
its SHA-256 into reslab/weights/index.json, and a model card reslab/weights/<file>.md.

The accuracy on the card is measured again on the bundled file itself, in float32 and with flip
test-time augmentation, so it holds for what users load even when training evaluated under bf16
autocast (``cpu_bf16``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reslab.models.pretrained import WEIGHTS_DIR, sha256  # noqa: E402
from reslab.data import EvalLoader  # noqa: E402
from reslab.errors import ReslabError  # noqa: E402
from reslab.inference import with_test_time_augmentation  # noqa: E402
from reslab.train.checkpoint import Checkpoint, checkpoint_dataset, load_checkpoint, save_checkpoint  # noqa: E402
from reslab.train.evaluate import evaluate  # noqa: E402


def measure(checkpoint: Checkpoint, data_root: str | None, tta: str):
    arrays = checkpoint_dataset(checkpoint, None, data_root, checkpoint.config["eval_split"])
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
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR, help="default: the package's weights folder")
    args = parser.parse_args()
    try:
        bundle(args)
    except ReslabError as exc:
        sys.exit(f"error: {exc}")


def bundle(args: argparse.Namespace) -> None:
    if not (args.run_dir / "summary.json").exists():
        raise ReslabError(f"{args.run_dir}: not a finished run (no summary.json)")
    best = load_checkpoint(args.run_dir / "best.pt")
    summary = json.loads((args.run_dir / "summary.json").read_text())
    history = best.progress["history"]
    slim = Checkpoint(spec=best.spec, classes=best.classes, normalizer=best.normalizer, input_size=best.input_size,
                      model_state=best.model_state, progress={"step": best.progress["step"], "history": history},
                      config=best.config)
    data = Path(best.config["data"]).name
    filename = f"{data}-{args.name}.pt"
    save_checkpoint(slim, args.weights_dir / filename)
    best_row = min((r for r in history if r.get("eval_error") is not None), key=lambda r: r["eval_error"])
    bundled = load_checkpoint(args.weights_dir / filename)
    plain, flipped = measure(bundled, args.data_root, "none"), measure(bundled, args.data_root, "flip")
    index_path = args.weights_dir / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    index[args.name] = {"file": filename, "sha256": sha256(args.weights_dir / filename), "card": filename[:-3] + ".md",
                        "data": data, "val_accuracy": round(1 - plain.error, 4),
                        "val_accuracy_flip_tta": round(1 - flipped.error, 4), "epoch": best_row["epoch"]}
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    c = best.config
    def percent(value: float | None) -> str:
        return "" if value is None else f"{100 * value:.2f}"

    curve = "\n".join(f"| {r['epoch']} | {percent(r['train_error'])} | {percent(r.get('eval_error'))} |"
                      for r in history)
    card = f"""# {args.name} on {data} (bundled with reslab)

- **Architecture**: {best.spec.name}, {sum(v.numel() for k, v in best.model_state.items() if 'running' not in k and 'num_batches' not in k):,} parameters, shortcut option {best.spec.shortcut}
- **Data**: {args.data_note}
- **Split**: trained on `{c['train_split']}`, selected and measured on `{c['eval_split']}` (val_fraction {c['val_fraction']}: per class, the last {100 * c['val_fraction']:g}% in file order)
- **Validation accuracy**: {100 * (1 - plain.error):.2f}% (top-5 {100 * (1 - plain.top5_error):.2f}%) on the {int(plain.count):,} `{c['eval_split']}` images, float32, this file; {100 * (1 - flipped.error):.2f}% with flip test-time augmentation (`--tta flip`). The weights are those of epoch {best_row['epoch']} of {len(history)}, the best on `{c['eval_split']}` during training ({100 * (1 - best_row['eval_error']):.2f}% then{', measured under bf16 autocast' if c.get('cpu_bf16') else ''})
- **Recipe**: `{c['recipe']}`: {c['optimizer']} lr {c['lr']} ({c['schedule']}, warm-up fraction {c['warmup_fraction']}), momentum {c['momentum']}, nesterov {c['nesterov']}, weight decay {c['weight_decay']} (BN/bias exempt: {c['no_decay_bn_bias']}), label smoothing {c['label_smoothing']}, batch {c['batch_size']}, {c['epochs']} epochs; {'bfloat16 autocast (`cpu_bf16`)' if c.get('cpu_bf16') else 'float32'} training
- **Command**: `{args.command}`
- **Seed**: {c['seed']}
- **Wall time**: {summary['wall_time_s'] / 60:.1f} minutes on {args.machine}
- **Classes**: {', '.join(best.classes)}
- **Preprocessing**: {best.input_size}x{best.input_size} RGB; `(x / 255 - mean) / std` per channel with mean {[round(v, 4) for v in best.normalizer.mean.tolist()]}, std {[round(v, 4) for v in best.normalizer.std.tolist()]}; images of other sizes are resized (shorter side) and centre-cropped by `reslab predict`
- **File**: `{filename}`, SHA-256 `{index[args.name]['sha256']}`, checked on every load

## Training curve

| epoch | train error % | val error % |
|---|---|---|
{curve}
"""
    (args.weights_dir / index[args.name]["card"]).write_text(card)
    print(f"wrote {args.weights_dir / filename} and its card")


if __name__ == "__main__":
    main()
