"""``reslab <verb>``: parse arguments, call the library, print. No logic of its own.

Errors a user can cause (``ReslabError``) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import NoReturn, Sequence

from . import __version__
from .errors import ReslabError


def cmd_models(args: argparse.Namespace) -> None:
    from .models.pretrained import available_pretrained
    from .models.registry import MODELS
    from .summary import preset_summary
    from .tables import format_table, human_count

    bundled = set(available_pretrained())
    rows, records = [], []
    for info in MODELS.values():
        if args.family and info.family != args.family:
            continue
        s = preset_summary(info.name)
        record = {"name": info.name, "family": info.family, "depth": info.depth, "residual": info.residual,
                  "preact": info.preact, "params": s.params, "flops": s.flops, "input_size": s.input_shape[-1],
                  "paper_error": info.paper_error, "paper_source": info.paper_source,
                  "pretrained": info.name in bundled}
        records.append(record)
        rows.append([info.name, info.family, info.depth, f"{s.params:,}", human_count(s.flops),
                     s.input_shape[-1], "" if info.paper_error is None else f"{info.paper_error:.2f}",
                     "yes" if record["pretrained"] else ""])
    if args.json:
        print(json.dumps(records, indent=2))
        return
    print(format_table(["name", "family", "depth", "params", "FLOPs", "input", "paper err %", "weights"], rows))
    print("\nFLOPs are multiply-adds at the input size shown. Paper errors: CIFAR-10 test (Table 6), "
          "ImageNet top-1 10-crop (Table 2). preact*: pre-activation blocks (He et al. 2016).\n"
          "Also: create_model('resnet', depth=6n+2) / 'plain' / 'preact' (block='bottleneck' for 9n+2), "
          "or a .yaml/.json spec (see `reslab summary --help`).")


def cmd_summary(args: argparse.Namespace) -> None:
    from .summary import summarize
    from .tables import format_table, human_count

    overrides = {}
    if args.shortcut:
        overrides["shortcut"] = args.shortcut
    if args.num_classes:
        overrides["num_classes"] = args.num_classes
    if args.in_channels:
        overrides["in_channels"] = args.in_channels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = summarize(args.model, input_size=args.input_size, **overrides)
    if args.json:
        print(json.dumps(s.to_dict(), indent=2))
        return
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    rows = [[r.name, "x".join(map(str, r.output_shape)), f"{r.params:,}", human_count(r.flops)] for r in s.rows]
    rows.append(["total", "", f"{s.params:,}", human_count(s.flops)])
    print(f"{s.model}, input {'x'.join(map(str, s.input_shape))}")
    print(format_table(["part", "output (CxHxW)", "params", "FLOPs (mult-adds)"], rows))


TRAIN_FLAGS = {
    # flag: (config key, type, help)
    "--model": ("model", str, "model name, family (with --set model_options.depth=N) or spec file"),
    "--data": ("data", str, "dataset name (cifar10, cifar100, mnist, fashion-mnist, digits) or folder"),
    "--data-root": ("data_root", str, "where named datasets live (default $RESLAB_DATA or ~/.cache/reslab/data)"),
    "--epochs": ("epochs", float, "train for this many epochs (clears iterations)"),
    "--iterations": ("iterations", int, "train for this many optimizer steps"),
    "--batch-size": ("batch_size", int, "global batch size"),
    "--lr": ("lr", float, "peak / initial learning rate"),
    "--weight-decay": ("weight_decay", float, "weight decay"),
    "--schedule": ("schedule", str, "multistep | onecycle | cosine | constant"),
    "--optimizer": ("optimizer", str, "sgd | adamw"),
    "--shortcut": (None, str, "shortcut option A | B | C"),
    "--eval-split": ("eval_split", str, "val | test | none"),
    "--train-split": ("train_split", str, "train (e.g. 45k of CIFAR-10) | trainval (all of it)"),
    "--eval-every": ("eval_every", int, "evaluate every N epochs"),
    "--seed": ("seed", int, "seed for initialisation, data order and augmentation"),
    "--device": ("device", str, "auto | cpu | cuda | mps"),
    "--threads": ("threads", int, "CPU threads"),
    "--image-size": ("image_size", int, "image folders: resize and centre-crop to this side"),
    "--channels": ("channels", int, "image folders: 3 (RGB) or 1 (grayscale)"),
    "--init-from": ("init_from", str, ("start from these weights: a checkpoint or run folder, or a file in "
                                       "torchvision's or the common CIFAR layout (with --model); "
                                       "--set finetune=head trains the classifier alone, "
                                       "--set backbone_lr_scale=0.1 the rest at a tenth of the rate")),
    "--normalize": ("normalize", str, ("channel | pixel (measured on the training images) | imagenet | cifar "
                                       "(published statistics) | weights (the --init-from file's; its default)")),
    "--teacher": ("teacher", str, "distil from this checkpoint, run folder or bundled model (e.g. resnet56), or "
                                  "from the mean of several joined with + (resnet56+resnet20); "
                                  "--set distill_weight=0.9 --set distill_temperature=4; --set teacher_mode=cached "
                                  "computes its outputs once instead of every step"),
    "--out": ("out", str, "run directory (default runs/<model>-<data>-<time>)"),
}


def train_overrides(args: argparse.Namespace) -> dict:
    from .train.config import parse_overrides

    values = parse_overrides(args.set or [])
    for flag, (key, _type, _help) in TRAIN_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if flag == "--shortcut":
            values.setdefault("model_options", {})["shortcut"] = value
        elif flag == "--epochs":
            values.update(epochs=value, iterations=None)
        elif flag == "--iterations":
            values.update(iterations=value, epochs=None)
        elif flag == "--eval-split" and value == "none":
            values["eval_split"] = None
        else:
            values[key] = value
    if args.compile:
        values["compile"] = True
    if args.deterministic:
        values["deterministic"] = True
    if args.strict:
        values["strict"] = True
    return values


def cmd_train(args: argparse.Namespace) -> int | None:
    from .train.config import resolve
    from .train.launch import check_before_launch, launch_torchrun, launched, run_as_worker
    from .train import fit, resume_run
    from .train.distributed import elastic_restart
    from .train.setup import default_run_dir

    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        if not args.resume:  # a bad flag or model: one line here, not an error per worker and torchrun's report
            check_before_launch(resolve(args.recipe, args.config, train_overrides(args)))
        return launch_torchrun(args.nproc, args.raw_argv)

    def train(should_stop):
        if args.resume:
            return resume_run(args.resume, quiet=args.quiet, should_stop=should_stop)
        config = resolve(args.recipe, args.config, train_overrides(args))
        run_dir = Path(config.out) if config.out else default_run_dir(config)
        if elastic_restart() and (run_dir / "last.pt").exists():
            # torchrun restarted this worker after a failure: continue from the last checkpoint.
            return resume_run(run_dir, quiet=args.quiet, should_stop=should_stop)
        return fit(config, quiet=args.quiet, should_stop=should_stop)

    result = run_as_worker(train)
    if result.status == "diverged":
        raise ReslabError(f"{result.message} ({result.run_dir})")
    speaks = os.environ.get("RANK", "0") == "0"  # under torchrun every worker gets here; one reports
    if result.status == "interrupted":
        if speaks and args.quiet:  # otherwise the run's log has just said it
            print(result.message)
        if launched():  # under reslab's launcher, the launcher reports the interruption
            return 0
        return 128 + (result.stopped_by or signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM, as shells count
    last = result.history[-1] if result.history else {}
    text = f"done: {result.run_dir}"
    if last.get("eval_error") is not None:
        text += f"  final eval error {100 * last['eval_error']:.2f}% (accuracy {100 * (1 - last['eval_error']):.2f}%)"
    if speaks:
        print(text)


def cmd_eval(args: argparse.Namespace) -> None:
    from .data import EvalLoader
    from .inference import with_test_time_augmentation
    from .predict import check_tta
    from .tables import format_table
    from .checkpoint import checkpoint_dataset, load_checkpoint
    from .train.evaluate import evaluate
    from .views import reads_files

    _refuse_unused_calibration(args, args.precision == "int8", "--precision int8")
    _refuse_unusable_compile(args)
    checkpoint = load_checkpoint(args.checkpoint)
    if args.crops != 1 or args.scales or reads_files(checkpoint.config):
        return _eval_whole_images(args, checkpoint)
    arrays = checkpoint_dataset(checkpoint, args.data, args.data_root, args.split)
    model, calibration = checkpoint.build_model(), None
    check_tta(checkpoint, args.tta, arrays)
    if args.precision == "int8":
        from .quantize import int8_model

        model, calibration = int8_model(checkpoint, args.calibration, args.data_root)
    elif args.precision != "float32" or args.compile:  # plain float32 evaluates the model exactly as trained
        from .inference import optimize_for_inference

        _note_if_bfloat16_is_slow(args.precision)
        model = _maybe_compiled(optimize_for_inference(model, args.precision), args.compile)
    model = with_test_time_augmentation(model, args.tta)
    result = evaluate(model, EvalLoader(arrays, 500, checkpoint.normalizer), len(checkpoint.classes))
    per_class = result.per_class_accuracy()
    confusion = result.confusion.tolist()
    if args.confusion_png:
        from .plots import confusion_matrix

        confusion_matrix(confusion, checkpoint.classes, args.confusion_png)
    if args.json:
        print(json.dumps({"checkpoint": str(checkpoint.path), "data": arrays.name, "precision": args.precision,
                          "calibration": calibration, "tta": args.tta, "examples": int(result.count),
                          "loss": result.loss, "top1_error": result.error, "top5_error": result.top5_error,
                          "per_class_accuracy": dict(zip(checkpoint.classes, per_class)),
                          "confusion": confusion, "classes": checkpoint.classes}, indent=2))
        return
    how = "" if args.tta == "none" else f", test-time augmentation {args.tta}"
    how += f", calibrated on {calibration}" if calibration else ""
    print(f"{checkpoint.path} on {arrays.name}: {int(result.count):,} images ({args.precision}{how})")
    print(f"top-1 error {100 * result.error:.2f}%  top-5 error {100 * result.top5_error:.2f}%  loss {result.loss:.4f}\n")
    print(format_table(["class", "accuracy %"], [[c, f"{100 * a:.2f}"] for c, a in zip(checkpoint.classes, per_class)]))
    print("\nconfusion matrix (rows: true, columns: predicted)")
    short = [c[:6] for c in checkpoint.classes]
    print(format_table([""] + short, [[short[i]] + row for i, row in enumerate(confusion)]))
    if args.confusion_png:
        print(f"\nwrote {args.confusion_png}")


def _eval_whole_images(args: argparse.Namespace, checkpoint) -> None:
    """``eval`` on the image files themselves: 10 crops, several scales, or the central crop of a model
    trained on streamed images."""
    from .views import checkpoint_files, evaluate_views

    files = checkpoint_files(checkpoint, args.data, args.split)
    model = checkpoint.build_model()
    if args.precision != "float32" or args.compile:
        from .inference import optimize_for_inference

        _note_if_bfloat16_is_slow(args.precision)
        model = _maybe_compiled(optimize_for_inference(model, args.precision), args.compile)
    result, how = evaluate_views(model, checkpoint, files, crops=args.crops, scales=args.scales or (),
                                 flip=args.tta == "flip")
    if args.json:
        print(json.dumps({"checkpoint": str(checkpoint.path), "data": files.name, "precision": args.precision,
                          "views": how, "examples": int(result.count), "loss": result.loss,
                          "top1_error": result.error, "top5_error": result.top5_error,
                          "per_class_accuracy": dict(zip(checkpoint.classes, result.per_class_accuracy()))}, indent=2))
        return
    print(f"{checkpoint.path} on {files.name}: {int(result.count):,} images ({args.precision}; {how})")
    print(f"top-1 error {100 * result.error:.2f}%  top-5 error {100 * result.top5_error:.2f}%  loss {result.loss:.4f}")


def _refuse_unusable_compile(args: argparse.Namespace) -> None:
    """--compile that cannot run is refused before anything else is said or done (one line)."""
    from .inference import require_cxx_compiler

    if args.compile and args.precision == "int8":
        raise ReslabError("--compile is for float32 and bfloat16: int8 runs in ONNX Runtime, which optimises "
                          "its own graph")
    if args.compile:
        require_cxx_compiler()


def _maybe_compiled(model, compile: bool):
    from .inference import compiled_for_inference

    return compiled_for_inference(model) if compile else model


def _note_if_bfloat16_is_slow(precision: str) -> None:
    from .inference import slow_bfloat16_warning

    warning = slow_bfloat16_warning() if precision == "bfloat16" else None
    if warning:
        print(warning, file=sys.stderr)


def _is_checkpoint(arg: str) -> bool:
    path = Path(arg)
    return path.suffix in (".pt", ".pth") or (path.is_dir() and ((path / "best.pt").exists() or (path / "last.pt").exists()))


def _checkpoint_and_images(paths: Sequence[str], model: str | None):
    """`VERB IMAGE...` uses the bundled model (or --model NAME); `VERB CHECKPOINT IMAGE...` a trained one."""
    from .checkpoint import load_checkpoint
    from .models.pretrained import pretrained_checkpoint

    paths = list(paths)
    if paths and _is_checkpoint(paths[0]) and model is None:
        return load_checkpoint(paths.pop(0)), paths
    return pretrained_checkpoint(model or "resnet20"), paths


def cmd_predict(args: argparse.Namespace) -> None:
    from .predict import predict

    _refuse_unused_calibration(args, args.precision == "int8", "--precision int8")
    _refuse_unusable_compile(args)
    checkpoint, paths = _checkpoint_and_images(args.paths, args.model)
    if not paths:
        raise ReslabError("no images given")
    _note_if_bfloat16_is_slow(args.precision)
    predictions = predict(checkpoint, paths, top_k=args.top_k, precision=args.precision, tta=args.tta,
                          calibration=args.calibration, data_root=args.data_root, compile=args.compile)
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
        return
    for p in predictions:
        print(f"{p.path}: " + ", ".join(f"{name} {100 * prob:.1f}%" for name, prob in p.top))


def cmd_explain(args: argparse.Namespace) -> None:
    from .explain import explain, image_format, save_render

    checkpoint, paths = _checkpoint_and_images(args.paths, args.model)
    if len(paths) != 1:
        raise ReslabError(f"explain takes one image, got {len(paths)} (a checkpoint, given first, is a .pt/.pth "
                          "file or a run folder)")
    if args.out is None and not args.json:
        raise ReslabError("nothing to write: give --out FILE.png, --json, or both")
    out = None
    if args.out:
        out = _output_file(Path(args.out), "--out")  # before the work, not after it
        image_format(out)
    result = explain(checkpoint, paths[0], class_name=args.target_class, layer=args.layer)
    if out:
        save_render(result, out)
    if args.json:
        print(json.dumps({**result.to_dict(), "out": None if out is None else str(out)}))
        return
    peak = result.peak
    where = (f"peak at row {peak[0]}, column {peak[1]} of the {result.heatmap.shape[1]}x{result.heatmap.shape[0]} input"
             if peak else "empty: no place in the image raises this class's score")
    print(f"{result.image}: {result.class_name} {100 * result.probability:.1f}% (predicted: {result.predicted}); "
          f"Grad-CAM at {result.layer} ({'x'.join(map(str, result.layer_map.shape))}), {where}")
    if out:
        print(f"wrote {out}")


def cmd_export(args: argparse.Namespace) -> None:
    import torch

    from .data.augment import preprocess_eval
    from .errors import ReslabError
    from .export import default_path, export
    from .checkpoint import checkpoint_dataset, load_checkpoint

    _refuse_unused_calibration(args, args.format == "onnx-int8", "--format onnx-int8")
    checkpoint = load_checkpoint(args.checkpoint)
    out = _output_file(Path(args.out or default_path(checkpoint, args.format)), "--out")
    if args.format == "torchscript":
        print("note: TorchScript is deprecated (torch.jit.trace is, in PyTorch); the default, pt2, is its "
              "successor", file=sys.stderr)
    calibration = calibration_source = None
    if args.format == "onnx-int8":
        from .quantize import calibration_images

        calibration, calibration_source = calibration_images(checkpoint, args.calibration, args.data_root)
    try:
        arrays = checkpoint_dataset(checkpoint, None, args.data_root, "val")
        if len(arrays) < 2:
            raise ReslabError(f"{arrays.name} has {len(arrays)} image")
        images, source = arrays.images[:16], f"{min(16, len(arrays))} {arrays.name} images"
    except ReslabError as exc:
        # The outputs are still compared, on random images, when the training data is not at hand.
        generator = torch.Generator().manual_seed(0)
        size = checkpoint.input_size
        images = torch.randint(0, 256, (16, checkpoint.spec.in_channels, size, size), dtype=torch.uint8,
                               generator=generator)
        source = f"16 random images (training data not found: {exc})"
    result = export(checkpoint, out, args.format, preprocess_eval(images, checkpoint.normalizer), calibration,
                    calibration_source)
    print(f"wrote {result.path} ({args.format}{', calibrated on ' + result.calibration if result.calibration else ''})")
    if result.max_abs_diff is None:
        print("not checked: install onnxruntime to compare its outputs with PyTorch")
        return
    sizes = ", ".join(str(c["batch"]) for c in result.checks)
    print(f"max |logits difference| vs PyTorch on {source}: {result.max_abs_diff:.3g} ({result.checked_with}, "
          f"batch sizes {sizes})")
    if args.format == "onnx-int8":
        largest = result.checks[-1]
        print(f"same top-1 class as float32 PyTorch for {largest['top1_agree']} of {largest['batch']} images")


def _output_file(path: Path, flag: str) -> Path:
    """``path`` if a file can be written there, else one line saying why (not a traceback later)."""
    if path.is_dir():
        raise ReslabError(f"{flag} {path}: is a folder; name a file")
    _check_writable_parent(path, flag)
    return path


def _output_folder(path: Path, flag: str) -> Path:
    if path.exists() and not path.is_dir():
        raise ReslabError(f"{flag} {path}: is a file; name a folder (new or existing)")
    _check_writable_parent(path, flag)
    return path


def _check_writable_parent(path: Path, flag: str) -> None:
    existing = next(p for p in path.absolute().parents if p.exists())  # what the write will create under
    if not existing.is_dir():
        raise ReslabError(f"{flag} {path}: {existing} is a file, so nothing can be written under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ReslabError(f"{flag} {path}: no permission to write in {existing}")


def _ints(text: str) -> list[int]:
    from .errors import ConfigError

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from None


def cmd_experiment(args: argparse.Namespace) -> None:
    from .analysis import experiments
    from .analysis.protocols import DEFAULT_SEEDS, protocol
    from .errors import ConfigError
    from .train.config import parse_overrides

    recipe, seeds = args.recipe or "paper", DEFAULT_SEEDS[args.name]
    budget = 1.0 if args.budget is None else args.budget  # --budget 0 is refused below, not read as "not given"
    if args.protocol:
        if args.recipe or args.budget is not None:
            raise ConfigError("--protocol sets the recipe and budget; drop --recipe/--budget, or drop --protocol")
        chosen = protocol(args.protocol)
        recipe, budget, seeds = chosen.recipe, chosen.budget, chosen.seeds_for(args.name)
    seeds = args.seeds or seeds
    out = _output_folder(Path(args.out or f"runs/experiment-{args.name}"), "--out")
    settings = experiments.ExperimentSettings(out=out, data=args.data, data_root=args.data_root, budget=budget,
                                              recipe=recipe, eval_split=args.eval_split, jobs=args.jobs,
                                              extra=parse_overrides(args.set or []), quiet=args.quiet,
                                              train=not args.report_only, protocol=args.protocol)
    if args.name == "degradation":
        report = experiments.degradation(settings, _ints(args.depths or "20,32,44,56"), seeds, args.seed)
    elif args.name == "table6":
        report = experiments.table6(settings, _ints(args.depths or "20,32,44,56"), seeds, args.seed)
    else:
        report = experiments.shortcuts(settings, args.depth, seeds, args.seed)
    print(report.read_text())
    print(f"wrote {report}")


def cmd_import(args: argparse.Namespace) -> None:
    from .checkpoint import save_checkpoint
    from .data import DataOptions, load_dataset
    from .data.augment import Normalizer
    from .foreign import ForeignWeights, class_names, import_checkpoint, read_weights
    from .summary import default_input_size

    if Path(args.out).suffix not in (".pt", ".pth"):
        raise ReslabError(f"--out {args.out}: name a .pt file (checkpoints are .pt or .pth)")
    out = _output_file(Path(args.out), "--out")
    weights = read_weights(args.file)
    if not isinstance(weights, ForeignWeights):
        raise ReslabError(f"{weights.path}: already a reslab checkpoint; nothing to import")
    options = {k: v for k, v in (("shortcut", args.shortcut), ("bottleneck_stride", args.bottleneck_stride)) if v}
    spec = weights.network(args.model, options)
    normalize = args.normalize or weights.normalization
    if normalize is None:
        raise ReslabError(f"{weights.path} ({weights.layout} layout) does not say how its inputs were normalised, and "
                          "code bases in this layout differ: give --normalize imagenet or cifar")
    data = None
    if args.data:
        data = load_dataset(args.data, "val", DataOptions(root=args.data_root, image_size=args.image_size,
                                                          channels=spec.in_channels if spec.in_channels in (1, 3) else 3))
        if data.channels != spec.in_channels:
            raise ReslabError(f"{args.model} from {weights.path} takes {spec.in_channels}-channel images; "
                              f"{data.name} has {data.channels}")
    classes = class_names(args.classes, weights.num_classes, data.classes if data else None)
    input_size = args.image_size or (data.image_size if data else default_input_size(spec))
    config = {k: v for k, v in (("data", args.data), ("data_root", args.data_root), ("image_size", args.image_size))
              if v is not None}
    checkpoint = import_checkpoint(weights, args.model, options, classes,
                                   Normalizer.published(normalize, spec.in_channels), input_size, config)
    save_checkpoint(checkpoint, out)
    shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
    print(f"wrote {out}: {checkpoint.spec.name} from {weights.path} ({weights.layout} layout), "
          f"{len(classes)} classes ({shown}), {input_size}px images normalised with {normalize}'s mean and std")


def cmd_features(args: argparse.Namespace) -> None:
    from .checkpoint import load_checkpoint
    from .features import image_features, save_features
    from .models.pretrained import available_pretrained, pretrained_checkpoint

    if Path(args.out).suffix != ".npz":
        raise ReslabError(f"--out {args.out}: name a .npz file (NumPy's archive of arrays)")
    out = _output_file(Path(args.out), "--out")
    bundled = not Path(args.checkpoint).exists() and args.checkpoint in available_pretrained()
    checkpoint = pretrained_checkpoint(args.checkpoint) if bundled else load_checkpoint(args.checkpoint)
    result = image_features(checkpoint, args.paths, batch_size=args.batch_size)
    save_features(result, out)
    labels = (f", labels of {len(result.classes)} class folders" if result.classes is not None else "")
    print(f"wrote {out}: {result.features.shape[1]} pooled features of each of {len(result.paths):,} images "
          f"({checkpoint.spec.name}){labels}")


def cmd_analyze(args: argparse.Namespace) -> None:
    from .analysis.plots import response_figure
    from .analysis.responses import layer_responses
    from .data import EvalLoader
    from .fileio import atomic_write_text
    from .checkpoint import checkpoint_dataset, load_checkpoint

    out = _output_folder(Path(args.out or "runs/responses"), "--out")
    results = {}
    for path in args.checkpoints:
        checkpoint = load_checkpoint(path)
        arrays = checkpoint_dataset(checkpoint, args.data, args.data_root, args.split)
        label = checkpoint.spec.name if checkpoint.spec.name not in results else f"{checkpoint.spec.name} ({path})"
        results[label] = layer_responses(checkpoint.build_model(), EvalLoader(arrays, 500, checkpoint.normalizer))
    out.mkdir(parents=True, exist_ok=True)  # only now: a bad checkpoint or dataset leaves no empty folder
    lines = ["model,layer,name,std,bn_scale"] + [
        f"{m},{r.index},{r.name},{r.std:.6g},{'' if r.bn_scale is None else f'{r.bn_scale:.6g}'}"
        for m, rs in results.items() for r in rs]
    atomic_write_text("\n".join(lines) + "\n", out / "responses.csv")
    response_figure(results, out / "responses.png")
    for model, rs in results.items():
        scales = [r.bn_scale for r in rs if r.bn_scale is not None]
        # What the BNs' gamma and beta alone predict: when it matches the mean std, the responses are
        # the BN scales training chose (reslab/analysis/responses.py).
        predicted = f", BN scales alone {sum(scales) / len(scales):.4f} over {len(scales)} BN layers" if scales else ""
        print(f"{model}: {len(rs)} layers, mean std {sum(r.std for r in rs) / len(rs):.4f}, "
              f"max {max(r.std for r in rs):.4f}{predicted}")
    print(f"wrote {out / 'responses.csv'} and {out / 'responses.png'}")


def cmd_deepen(args: argparse.Namespace) -> None:
    import torch

    from .analysis.deepen import deepen, max_output_difference
    from .data import EvalLoader
    from .checkpoint import Checkpoint, checkpoint_dataset, load_checkpoint, save_checkpoint

    source = load_checkpoint(args.checkpoint)
    if args.out:
        _output_file(Path(args.out), "--out")  # before the work, not after it
    model = source.build_model()
    stages = [s - 1 for s in _ints(args.where)] if args.where else None
    result = deepen(model, args.add, stages)
    arrays = checkpoint_dataset(source, args.data, args.data_root, "val")
    sample = arrays.subset(torch.arange(min(len(arrays), 1000)), arrays.name)  # real images, a bounded number
    batches = list(EvalLoader(sample, 250, source.normalizer))
    diffs = {mode: max_output_difference(model, result.model, batches, train_mode=mode == "train")
             for mode in ("eval", "train")}
    out = _output_file(Path(args.out or source.path.parent / f"deepened-{result.spec.name}.pt"), "--out")
    config = dict(source.config)
    save_checkpoint(Checkpoint(spec=result.spec, classes=source.classes, normalizer=source.normalizer,
                               input_size=source.input_size, model_state=result.model.state_dict(),
                               config=config, progress={"deepened_from": str(source.path)},
                               trained_with_flips=source.trained_with_flips), out)
    added = ", ".join(f"stage {s + 1}: +{n}" for s, n in result.added.items() if n)
    print(f"{source.spec.name} (depth {source.spec.depth}) -> {result.spec.name} (depth {result.spec.depth}); {added}")
    print(f"max |logit difference| on {len(sample)} {arrays.name} images: "
          f"eval mode {diffs['eval']:.3g}, train mode {diffs['train']:.3g}")
    if not source.spec.residual:
        print("plain network: the inserted layers pass the signal only in eval mode (train-mode BN renormalises)")
    print(f"wrote {out}; continue training with: reslab train --init-from {out} --data {config.get('data')}")


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake in the command line reported in one line like every other error (the
    usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_inference_flags(p: argparse.ArgumentParser) -> None:
    # Choices repeat inference.PRECISIONS / TTA_MODES so that parsing flags does not import torch.
    p.add_argument("--precision", choices=["float32", "bfloat16", "int8"], default="float32",
                   help="bfloat16: BN-folded weights in bf16; faster where the CPU has AVX512_BF16/AMX "
                        "(see docs/performance.md), outputs rounded to bf16. int8: BN-folded, quantized "
                        "(calibrated on 256 training images) and run by ONNX Runtime (needs reslab[onnx])")
    _add_calibration_flag(p)
    p.add_argument("--compile", action="store_true",
                   help="float32/bfloat16 through torch.compile (needs a C++ compiler): about 10 s of "
                        "compiling first, then faster; for many images (docs/performance.md)")
    p.add_argument("--tta", choices=["none", "flip"], default="none",
                   help="flip: average each image's prediction with its mirror image's (twice the compute)")


def _add_calibration_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", metavar="FOLDER",
                   help="int8: calibrate on (up to 256 of) the images in this folder instead of the training split")


def _refuse_unused_calibration(args: argparse.Namespace, int8: bool, needs: str) -> None:
    """A --calibration folder that nothing would read is a mistake the user should hear about."""
    if args.calibration and not int8:
        raise ReslabError(f"--calibration is read only by int8; add {needs}")


def positive_int(text: str) -> int:
    """A count given on the command line: a whole number of 1 or more (``--top-k -3`` is refused, not
    read as top-1)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _scales(text: str) -> list[int]:
    """--scales 224,256,384: sizes in pixels, at least 1 each."""
    try:
        scales = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        scales = []
    if not scales or any(s < 1 for s in scales):
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes in pixels, e.g. 224,256,384,480,640; got {text!r}")
    return scales


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reslab", description="Deep residual networks: build, train, study, use.")
    parser.add_argument("--version", action="version", version=f"reslab {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add_verb in (_add_models, _add_summary, _add_train, _add_eval, _add_predict, _add_explain, _add_features,
                     _add_export, _add_import, _add_experiment, _add_analyze, _add_deepen):  # in `reslab --help`'s order
        add_verb(verbs)
    return parser


def _add_models(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("models", help="list the registered models")
    p.add_argument("--family", choices=["cifar", "imagenet"], help="only this family")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)


def _add_summary(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("summary", help="per-stage shapes, parameters and FLOPs of a model or spec file")
    p.add_argument("model", help="a model name (e.g. resnet56) or a .yaml/.json spec file")
    p.add_argument("--input-size", type=positive_int, help="square input side (default: 32, or 224 for ImageNet models)")
    p.add_argument("--shortcut", choices=["A", "B", "C"], help="override the shortcut option")
    p.add_argument("--num-classes", type=positive_int, help="override the number of classes")
    p.add_argument("--in-channels", type=positive_int, help="override the input channels (1 for grayscale)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_summary)


def _add_train(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("train", help="train a model (recipes: paper, fast, imagenet-paper, imagenet-fast)",
                         description="Precedence: recipe < --config file < flags < --set KEY=VALUE.")
    p.add_argument("--recipe", help="paper (Sec. 4.2, 64k iterations), fast (one-cycle, 40 epochs), imagenet-paper "
                   "(Sec. 3.4: scale augmentation, 60e4 iterations) or imagenet-fast (random-resized crops, cosine)")
    p.add_argument("--config", help="YAML file of settings (any TrainConfig key)")
    for flag, (_key, type_, help_) in TRAIN_FLAGS.items():
        p.add_argument(flag, type=type_, help=help_)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any setting, e.g. --set label_smoothing=0.1")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms only")
    p.add_argument("--strict", action="store_true", help="image folders: fail on unreadable or non-image files")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--quiet", action="store_true", help="no progress output (for logs)")
    p.add_argument("--nproc", type=positive_int, help="processes on this machine (starts torchrun; see README)")
    p.set_defaults(func=cmd_train)


def _add_eval(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("eval", help="top-1/top-5 error, per-class accuracy, confusion matrix")
    p.add_argument("checkpoint", help="a .pt checkpoint or a run folder")
    p.add_argument("--data", help="dataset (default: the one the model was trained on)")
    p.add_argument("--data-root", help="where named datasets live")
    p.add_argument("--split", default="val", choices=["train", "val", "trainval", "test"])
    p.add_argument("--confusion-png", metavar="PATH", help="also draw the confusion matrix")
    p.add_argument("--crops", type=int, choices=[1, 10], default=1,
                   help="10: the 10-crop test (corners and centre of the image resized to 8/7 of the input "
                        "size, and their mirror images; paper Table 3), from the image files")
    p.add_argument("--scales", type=_scales, metavar="S,S,...",
                   help="the fully-convolutional multi-scale test: the whole image at these shorter sides "
                        "(paper: 224,256,384,480,640), probabilities averaged; with --tta flip, mirrored too")
    _add_inference_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)


def _add_predict(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("predict", help="classify image files (or folders of them)",
                         description="reslab predict [CHECKPOINT] IMAGE...: without a checkpoint, the bundled "
                                     "CIFAR-10 ResNet-20 (or --model NAME) classifies the images.")
    p.add_argument("paths", nargs="+", metavar="[CHECKPOINT] IMAGE", help="a checkpoint or run folder, then images or folders")
    p.add_argument("--model", help="a bundled model instead of a checkpoint (see `reslab models`)")
    p.add_argument("--top-k", type=positive_int, default=3)
    _add_inference_flags(p)
    p.add_argument("--data-root", help="int8: where the training data (for calibration) lives")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)


def _add_explain(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("explain", help="Grad-CAM: where in an image the model found its evidence",
                         usage="reslab explain [CHECKPOINT] IMAGE [--class NAME] [--layer NAME] [--out FILE.png] "
                               "[--json] [--model NAME]",
                         description="reslab explain [CHECKPOINT] IMAGE --out cam.png: the class activation map "
                                     "(Grad-CAM) of the predicted class, or of --class, drawn over the image as "
                                     "the model saw it. Without a checkpoint, the bundled ResNet-20 (or --model).")
    p.add_argument("paths", nargs="+", metavar="[CHECKPOINT] IMAGE", help="a checkpoint or run folder, then one image")
    p.add_argument("--model", help="a bundled model instead of a checkpoint (see `reslab models`)")
    p.add_argument("--class", dest="target_class", metavar="NAME",
                   help="the class to explain, by name or index (default: the predicted one)")
    p.add_argument("--layer", metavar="NAME", help="the module whose output is mapped (default: the last stage, stages.N; "
                                   "e.g. stages.1 for a finer map)")
    p.add_argument("--out", metavar="FILE.png", help="write the image and the map over it, side by side")
    p.add_argument("--json", action="store_true", help="print the map, class, probability and peak as JSON")
    p.set_defaults(func=cmd_explain)


def _add_export(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("export", help="write torch.export (.pt2), ONNX or int8 ONNX, checked against PyTorch",
                         description="Writes the model, loads it back and compares its outputs with PyTorch's at "
                                     "batch sizes 1, 7 and 16; every format takes a batch of any size.")
    p.add_argument("checkpoint", help="a .pt checkpoint or a run folder")
    # Choices repeat export.FORMATS so that parsing flags does not import torch.
    p.add_argument("--format", choices=["pt2", "onnx", "onnx-int8", "torchscript"], default="pt2",
                   help="pt2 (default): torch.export program, torch.export.load(path).module(); onnx: float32; "
                        "onnx-int8: BN-folded, quantized to int8 (needs reslab[onnx]); torchscript: deprecated, "
                        "as torch.jit.trace is")
    p.add_argument("--out", help="output file (default: beside the checkpoint, .pt2 / .onnx / .int8.onnx)")
    p.add_argument("--data-root", help="where the training data lives (check images; int8 calibration)")
    _add_calibration_flag(p)
    p.set_defaults(func=cmd_export)


def _add_import(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("import", help="make weights saved by other code (torchvision, CIFAR layouts) a checkpoint",
                         description="reslab import FILE --model NAME --out CK.pt: weights in torchvision's layout "
                                     "(conv1, layer1.0..., fc) or the common CIFAR layout (..., linear), at the top of the "
                                     "file or under state_dict or model, keys prefixed module. or not, as a reslab "
                                     "checkpoint that eval, predict, export, deepen and train --init-from take.")
    p.add_argument("file", help="the weights file (.pth, .pt, .th)")
    p.add_argument("--model", required=True, help="the network the weights are of, e.g. resnet50 or resnet20")
    p.add_argument("--shortcut", choices=["A", "B", "C"], help="the shortcut option (CIFAR files with "
                   "shortcut.0 convs are option B)")
    p.add_argument("--bottleneck-stride", choices=["1x1", "3x3"],
                   help="where bottlenecks stride (default: 3x3 for torchvision's layout, as torchvision does)")
    p.add_argument("--normalize", choices=["imagenet", "cifar"],
                   help="the statistics the weights were trained with (default: imagenet for torchvision's layout)")
    p.add_argument("--classes", metavar="FILE|N", help="class names, one a line (default: the --data set's, "
                   "else class_0, class_1, ...)")
    p.add_argument("--data", help="the dataset the classifier's classes are of (names, image size; eval's default)")
    p.add_argument("--data-root", help="where named datasets live")
    p.add_argument("--image-size", type=positive_int, help="input side (default: the --data set's, else 224 for "
                   "ImageNet-shaped networks, 32 otherwise)")
    p.add_argument("--out", required=True, help="the checkpoint to write")
    p.set_defaults(func=cmd_import)


def _add_features(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("features", help="pooled features of images, for other models",
                         description="reslab features CHECKPOINT IMAGE|FOLDER... --out feats.npz: each image's "
                                     "global-average-pooled features (what the classifier reads), read as predict "
                                     "reads images. The .npz holds features (N x D), paths and, for one folder laid "
                                     "out root/<class>/..., labels and classes.")
    p.add_argument("checkpoint", help="a .pt checkpoint, a run folder or a bundled model (e.g. resnet20)")
    p.add_argument("paths", nargs="+", metavar="IMAGE", help="images or folders of them")
    p.add_argument("--out", required=True, metavar="FILE.npz")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images decoded and run at a time")
    p.set_defaults(func=cmd_features)


def _add_experiment(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("experiment", help="the paper's experiments: degradation, table6, shortcuts")
    p.add_argument("name", choices=["degradation", "table6", "shortcuts"])
    p.add_argument("--depths", help="comma-separated depths (default 20,32,44,56)")
    p.add_argument("--depth", type=int, default=20, help="shortcuts: the depth")
    p.add_argument("--seeds", type=positive_int,
                   help="seeds per network (default: the protocol's; without one, 3 for table6, else 1)")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--protocol", choices=["short", "medium", "full"],
                   help="short: 4 epochs, the CPU protocol of docs/results.md; medium: 10 epochs (Table 6 in "
                   "hours on a CPU); full: the paper's 64k iterations")
    p.add_argument("--budget", type=float, help="fraction of the recipe's length (paper: 64k iterations; "
                   "fast: 40 epochs); default 1")
    p.add_argument("--recipe", help="default paper")
    p.add_argument("--data", default="cifar10")
    p.add_argument("--data-root")
    p.add_argument("--eval-split", default="val")
    p.add_argument("--jobs", type=positive_int, default=1, help="members trained in parallel processes")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any training setting for every member")
    p.add_argument("--out", help="experiment folder (default runs/experiment-NAME); rerun to resume. "
                   "Experiments given one folder share the members they have in common")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rebuild the report from the members finished so far")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_experiment)


def _add_analyze(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("analyze", help="analyses of trained models (responses: paper Fig. 7)")
    p.add_argument("what", choices=["responses"])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data")
    p.add_argument("--data-root")
    p.add_argument("--split", default="val", choices=["train", "val", "trainval", "test"])
    p.add_argument("--out", help="output folder (default runs/responses)")
    p.set_defaults(func=cmd_analyze)


def _add_deepen(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("deepen", help="add identity blocks to a trained ResNet (the constructed solution)")
    p.add_argument("checkpoint")
    p.add_argument("--add", type=positive_int, required=True, help="blocks to insert")
    p.add_argument("--where", help="comma-separated stages (1-based) to append to, round-robin (default all)")
    p.add_argument("--data")
    p.add_argument("--data-root")
    p.add_argument("--out", help="output checkpoint")
    p.set_defaults(func=cmd_deepen)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw_argv)
    args.raw_argv = raw_argv
    # A warning reaches the user as one line in the command's voice, not with a source line of ours.
    previous_format = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"reslab {args.verb}: warning: {message}\n"
    try:
        status = args.func(args)
    except ReslabError as exc:
        print(f"reslab {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Experiment members checkpoint when stopped and a rerun of the experiment picks them all up;
        # a member's own "resume with --resume DIR" (when shown) would finish that member alone.
        hint = "; rerun the same command to resume" if args.verb == "experiment" else ""
        print(f"reslab {args.verb}: interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        warnings.formatwarning = previous_format
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
