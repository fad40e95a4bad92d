"""Training configuration: one dataclass, filled from a recipe, a YAML file and overrides.

Precedence: dataclass defaults (the paper's CIFAR recipe, Sec. 4.2) < recipe < YAML file < command-line
overrides. The resolved config is saved with every run (``config.yaml``), and is what ``--resume``
continues. It holds only what the user chose: facts found while the run starts (file hashes, the
resolved run folder) go to the run's ``run.json`` (reslab/train/setup.py).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import ConfigError, SpecError
from ..fileio import read_yaml_mapping
from .schedules import milestones_are_fractions

if TYPE_CHECKING:
    from ..models.resnet import NetSpec

DEFAULT_MODEL = "resnet20"
ENSEMBLE_JOIN = "+"  # the command line's way to name several teachers: resnet56+resnet20
SCHEDULES = ("multistep", "onecycle", "cosine", "constant", "plateau")
DATA_FORMATS = ("auto", "memory", "stream", "cache")
CROPS = ("pad", "scale", "random-resized")
OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "cuda", "mps")
TEACHER_MODES = ("online", "cached")
NORMALIZE = ("pixel", "channel", "imagenet", "cifar", "weights")  # see TrainConfig.normalize
FINETUNE = ("all", "head")


@dataclass
class TrainConfig:
    # ---- what to train -----------------------------------------------------------------
    # A preset name, a family ("resnet" + model_options.depth) or a spec file. None: DEFAULT_MODEL, or with
    # init_from the network in that file.
    model: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)  # create_model overrides (shortcut, depth...)
    # Start from these weights (new optimizer and schedule): a reslab checkpoint or run folder, or a file saved
    # by other code in torchvision's or the common CIFAR layout (then ``model`` names its network).
    init_from: str | None = None
    data: str = "cifar10"  # dataset name or path (see reslab.data)
    data_root: str | None = None
    train_split: str = "train"  # "train" (45k of CIFAR-10) or "trainval" (all 50k)
    eval_split: str | None = "val"  # "val", "test" or None
    val_fraction: float = 0.1
    image_size: int | None = None  # image folders: resize/crop side
    channels: int = 3  # image folders: 3 (RGB) or 1 (grayscale)
    strict: bool = False  # image folders: fail on unreadable or non-image files instead of skipping them
    # Measured on the training images: "pixel" (the paper's per-pixel mean subtraction) or "channel" (mean/std).
    # Fixed: "imagenet" or "cifar" (the statistics weights trained elsewhere expect, reslab/data/augment.py).
    # "weights": those the init_from weights were trained with (a checkpoint's own; torchvision's: imagenet),
    # what resolve() chooses for a run with init_from when nothing else is asked for.
    normalize: str = "pixel"
    augment: bool = True  # the dataset's crop/flip (CIFAR: pad 4, random crop, flip)
    cutout: int = 0  # side in pixels of a square zeroed at a random place in each training image; 0: none
    # ---- image folders larger than memory (reslab/data/stream.py, reslab/train/rundata.py) ----------
    # memory: decoded once into one uint8 tensor; stream: JPEGs decoded by worker processes as batches are
    # needed; cache: a one-time resized copy on disk read by random access; auto: memory when the decoded
    # folder fits in half the available memory and the crop allows it, else cache when it fits in half
    # the free disk, else stream.
    data_format: str = "auto"
    # pad: the dataset's pad-and-crop (CIFAR's, in memory); scale: shorter side resized to a random size
    # in scale_range, then an image_size crop (paper Sec. 3.4); random-resized: 8%-100% of the area at
    # aspect 3/4-4/3, resized to image_size. The last two read the images at full size (stream or cache).
    crop: str = "pad"
    scale_range: list[int] = field(default_factory=lambda: [256, 480])
    eval_resize: int | None = None  # evaluation: shorter side before the central crop (None: 8/7 of image_size)
    lighting: float = 0.0  # std of Krizhevsky et al. 2012's PCA lighting noise (0.1 in their recipe); 0: none
    workers: int | None = None  # stream/cache: decoding processes (None: one per core, at most 8)
    cache_size: int | None = None  # cache: shorter side stored (None: the largest the crops read)
    # ---- the recipe (defaults: the paper's, Sec. 4.2; reslab/train/recipes.py holds the others) -----
    recipe: str = "paper"
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    no_decay_bn_bias: bool = False  # exempt BN parameters and biases from weight decay
    label_smoothing: float = 0.0
    batch_size: int = 128  # global batch (all processes together)
    # Knowledge distillation (reslab/train/distill.py): checkpoints, run folders or bundled model names;
    # several teach as an ensemble (the mean of their logits).
    teacher: list[str] | None = None
    # Weight of the soft (teacher) term; 1 - weight goes to the labels. 0.9 and T=4 are the usual CIFAR
    # settings (e.g. Tian et al. 2020, "Contrastive Representation Distillation", their KD baseline).
    distill_weight: float = 0.9
    distill_temperature: float = 4.0
    # online: the teacher reads every augmented batch the student reads (one teacher forward per step).
    # cached: its logits for each unaugmented training image (averaged with the mirror image's when
    # training mirrors) are computed when the run starts (and again when it resumes) and teach every
    # augmented view of that image: distillation at the cost of plain training, with targets that do
    # not follow crops or cutout.
    teacher_mode: str = "online"
    # Split each process's batch into this many micro-batches, summing their gradients (same update,
    # less memory; BN sees each micro-batch alone, as it sees each process's slice under DDP).
    accumulation: int = 1
    iterations: int | None = 64_000  # total optimizer steps; wins over epochs when both are set
    epochs: float | None = None
    schedule: str = "multistep"
    # multistep: steps at which lr *= gamma; values below 1 are fractions of the run (0.5 = halfway),
    # so the paper recipe's [0.5, 0.75] is 32k/48k of 64k and still fits when the run is shortened.
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    # plateau: lr *= gamma when the evaluation error has not improved by plateau_threshold (absolute) for
    # plateau_patience evaluations in a row (paper Sec. 3.4: "divided by 10 when the error plateaus").
    plateau_patience: int = 5
    plateau_threshold: float = 0.001
    # Linear ramp from warmup_start_factor * lr (any schedule): steps, or a fraction of the run below 1.
    warmup: float = 0.0
    warmup_start_factor: float = 0.1
    # Paper Sec. 4.2, ResNet-110/1202: lr warmup_lr until the training error drops below this, then lr.
    warmup_until_error: float | None = None
    warmup_lr: float = 0.01
    # Weight averaging (reslab/train/averaging.py): from this point on, the weights at the end of every
    # epoch join a running mean, evaluated and saved as averaged.pt. Below 1 a fraction of the run (0.75:
    # the last quarter), else an epoch count; None: no averaging.
    average_from: float | None = None
    # Transfer learning (reslab/train/finetune.py): "all" trains every layer; "head" trains the classifier
    # alone (a linear probe: the rest frozen, BN statistics included).
    finetune: str = "all"
    # With finetune "all": every layer but the classifier learns at this fraction of the rate (e.g. 0.1, so
    # that weights from init_from are adjusted rather than relearned while a new classifier learns).
    backbone_lr_scale: float = 1.0
    # ---- running ------------------------------------------------------------------------
    seed: int = 0
    eval_every: int = 1  # epochs
    eval_batch_size: int = 500
    device: str = "auto"
    channels_last: bool = True
    amp: bool = True  # bf16 autocast on CUDA
    # bf16 autocast on CPU: "auto" (on where the CPU has native bf16, AVX512_BF16 or AMX), true or false.
    # There it trains ResNet-20 1.56x as fast as float32 (docs/performance.md), and a matched pair under
    # the short protocol ended within the spread between seeds (docs/results.md); elsewhere bf16 is
    # emulated and several times slower, so auto never chooses it.
    cpu_bf16: bool | str = "auto"
    compile: bool = False
    deterministic: bool = False
    sync_bn: bool = False  # SyncBatchNorm when running on several processes
    threads: int | None = None  # CPU threads (torch.set_num_threads)
    out: str | None = None  # run directory (default: runs/<model>-<data>-<time>)

    def validate(self) -> "TrainConfig":
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        # Every field's type first: a switch given as "yes" would read as on, and "abc" for a number
        # would fail a comparison below with a traceback.
        for f in dataclasses.fields(self):
            kind, optional, value = _declared_type(f), str(f.type).endswith("| None"), getattr(self, f.name)
            if f.name == "cpu_bf16":
                need(isinstance(value, bool) or value == "auto", f"cpu_bf16 must be auto, true or false, got {value!r}")
            elif kind == "bool":
                need(isinstance(value, bool), f"{f.name} must be true or false, got {value!r}")
            elif kind in ("int", "float") and value is None:
                need(optional, f"{f.name} must be a number, got null")
            elif kind in ("int", "float"):
                whole = kind == "int"
                need(not isinstance(value, bool) and isinstance(value, int if whole else (int, float)),
                     f"{f.name} must be {'a whole number' if whole else 'a number'}, got {value!r}")
                need(whole or math.isfinite(value), f"{f.name} must be a finite number, got {value!r}")
        need(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        need(self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        need(isinstance(self.batch_size, int) and self.batch_size > 0, f"batch_size must be a positive integer, got {self.batch_size!r}")
        need(isinstance(self.accumulation, int) and self.accumulation >= 1,
             f"accumulation must be a positive integer, got {self.accumulation!r}")
        need(self.lr > 0, f"lr must be positive, got {self.lr}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        need(0 <= self.distill_weight <= 1, f"distill_weight must be in [0, 1], got {self.distill_weight}")
        need(self.distill_temperature > 0, f"distill_temperature must be positive, got {self.distill_temperature}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        teacher_settings = ("distill_weight", "distill_temperature", "teacher_mode")
        need(self.teacher is not None or all(getattr(self, k) == defaults[k] for k in teacher_settings),
             "distill_weight, distill_temperature and teacher_mode need a teacher (--teacher)")
        need(self.teacher_mode in TEACHER_MODES,
             f"teacher_mode must be one of {', '.join(TEACHER_MODES)}, got {self.teacher_mode!r}")
        need(self.teacher is None or (isinstance(self.teacher, list) and len(self.teacher) > 0
                                      and all(isinstance(t, str) and t != "" for t in self.teacher)),
             f"teacher must be a list of checkpoints, run folders or bundled model names, got {self.teacher!r}")
        need(self.model is None or (isinstance(self.model, str) and self.model != ""),
             f"model must be a model name or spec file, got {self.model!r}")
        # torch's generators take these (a negative seed wraps); beyond them seeding fails with a traceback
        need(-(2**63) <= self.seed < 2**64, f"seed must be a whole number from -2**63 to 2**64 - 1, got {self.seed}")
        need(self.threads is None or self.threads >= 1, f"threads must be 1 or more, got {self.threads}")
        need(self.warmup >= 0, f"warmup must be >= 0 (steps, or a fraction of the run below 1), got {self.warmup}")
        need(self.iterations is not None or self.epochs is not None, "set iterations or epochs")
        need(self.iterations is None or (isinstance(self.iterations, int) and self.iterations > 0),
             f"iterations must be a positive integer, got {self.iterations!r}")
        need(self.epochs is None or self.epochs > 0, f"epochs must be positive, got {self.epochs}")
        need(self.average_from is None or self.average_from >= 0,
             f"average_from must be >= 0 (a fraction of the run below 1, else epochs), got {self.average_from}")
        need(self.cutout >= 0, f"cutout must be a whole number of pixels >= 0, got {self.cutout!r}")
        need(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        need(self.train_split in ("train", "trainval"), f"train_split must be train or trainval, got {self.train_split!r}")
        need(self.eval_split in (None, "val", "test"), f"eval_split must be val, test or none, got {self.eval_split!r}")
        need(not (self.train_split == "trainval" and self.eval_split == "val"),
             "train_split trainval includes the validation images; evaluate on test (or none)")
        need(self.channels in (1, 3), f"channels must be 1 or 3, got {self.channels!r}")
        need(self.normalize in NORMALIZE, f"normalize must be one of {', '.join(NORMALIZE)}, got {self.normalize!r}")
        need(self.normalize != "weights" or self.init_from is not None,
             "normalize weights takes the statistics of the init_from weights; this run has none (--init-from)")
        need(self.finetune in FINETUNE, f"finetune must be one of {', '.join(FINETUNE)}, got {self.finetune!r}")
        need(self.backbone_lr_scale > 0, f"backbone_lr_scale must be positive, got {self.backbone_lr_scale}")
        need(self.finetune != "head" or self.backbone_lr_scale == 1,
             "backbone_lr_scale has no effect with finetune head (the backbone does not train)")
        need(self.finetune != "head" or self.average_from is None,
             "average_from measures BN statistics again for the averaged weights, which finetune head keeps frozen")
        need(_valid_milestones(self.milestones),
             "milestones must be an increasing list of positive numbers, either all steps (whole numbers) "
             f"or all fractions of the run (below 1), e.g. [0.5, 0.75] or [32000, 48000]; got {self.milestones!r}")
        need(isinstance(self.model_options, dict), "model_options must be a mapping")
        self._validate_folders(need)
        return self

    def _validate_folders(self, need) -> None:
        need(self.data_format in DATA_FORMATS,
             f"data_format must be one of {', '.join(DATA_FORMATS)}, got {self.data_format!r}")
        need(self.crop in CROPS, f"crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        need(self.crop == "pad" or self.image_size is not None,
             f"crop {self.crop} needs the crops' side: --image-size N (224 for ImageNet networks)")
        need(self.crop == "pad" or self.data_format != "memory",
             f"crop {self.crop} reads the images at full size: data_format stream or cache, not memory")
        sizes = self.scale_range
        need(isinstance(sizes, (list, tuple)) and len(sizes) == 2 and all(
             isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes) and sizes[0] <= sizes[1],
             f"scale_range must be two sizes in pixels, smallest first, e.g. [256, 480]; got {sizes!r}")
        need(self.crop != "scale" or self.image_size is None or sizes[0] >= self.image_size,
             f"scale_range {sizes} starts below the {self.image_size} px crop; start it at {self.image_size} or more")
        need(self.image_size is None or self.image_size >= 1, f"image_size must be 1 or more, got {self.image_size}")
        need(self.eval_resize is None or self.eval_resize >= (self.image_size or 1),
             f"eval_resize must be at least image_size ({self.image_size}), got {self.eval_resize}")
        need(self.lighting >= 0, f"lighting must be >= 0, got {self.lighting}")
        need(self.lighting == 0 or self.channels == 3, "lighting (PCA colour noise) needs RGB images (channels 3)")
        need(self.workers is None or self.workers >= 0, f"workers must be 0 or more, got {self.workers}")
        need(self.cache_size is None or self.cache_size >= 1, f"cache_size must be 1 or more, got {self.cache_size}")
        need(self.plateau_patience >= 1, f"plateau_patience must be 1 or more, got {self.plateau_patience}")
        need(self.plateau_threshold >= 0, f"plateau_threshold must be >= 0, got {self.plateau_threshold}")
        need(self.schedule != "plateau" or self.eval_split is not None,
             "schedule plateau follows the evaluation error: it needs an evaluation split (--eval-split val)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _declared_type(f: dataclasses.Field) -> str:
    """``"int"`` for ``int`` or ``int | None``: the annotation is a string here (``from __future__
    import annotations``), a type object elsewhere."""
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return annotation.split("|")[0].strip()


def _valid_milestones(milestones: Any) -> bool:
    if not isinstance(milestones, (list, tuple)):
        return False
    numbers = all(isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0 for m in milestones)
    if not numbers or list(milestones) != sorted(milestones):
        return False
    return milestones_are_fractions(milestones) or all(float(m).is_integer() for m in milestones)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _yaml_value(text: str) -> Any:
    """A command-line value read by YAML's rules; text YAML cannot read (``[1``) stays text, for the
    field's own check to refuse in one line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce(name: str, value: Any) -> Any:
    """Turn a command-line string into the field's type (YAML rules: 1e-4, true, null, [1, 2])."""
    if not isinstance(value, str):
        return value
    parsed = _yaml_value(value) if value != "" else ""
    default = FIELDS[name].default
    if name == "cpu_bf16":
        return parsed  # auto, or a switch
    if isinstance(default, str) and not isinstance(parsed, str) and parsed is not None:
        return value  # e.g. model: "50" stays a string
    if FIELDS[name].type == "str | None" and parsed is not None:
        return value  # a path or name: init_from=2024-01-01 or out=123 stay strings; null still clears it
    if name == "teacher" and not isinstance(parsed, list) and parsed is not None:
        return value  # one name or a +-joined ensemble, split by apply()
    if isinstance(default, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
        return float(parsed)
    return parsed


# Settings of earlier reslab versions, read from the config.yaml of their runs: old name -> new name.
# (warmup_iterations and warmup_fraction became one ``warmup``; the recorded hashes moved to run.json.)
RUN_FACTS = ("init_from_sha256", "teacher_sha256")


def _renamed(values: dict[str, Any]) -> dict[str, Any]:
    if values.get("init_from_sha256") and values.get("init_from"):
        # A run of an earlier version started from a file: it trained the file's network, whatever its
        # config's model (then always written, default resnet20) said.
        values = {**values, "model": None}
    values = {k: v for k, v in values.items() if k not in RUN_FACTS}
    old = {k: values.pop(k) for k in ("warmup_iterations", "warmup_fraction") if k in values}
    if old and "warmup" not in values:
        # The old rule: warmup_iterations when it is set and not 0, else warmup_fraction.
        steps = old.get("warmup_iterations")
        values["warmup"] = steps if steps not in (None, 0, "0") else old.get("warmup_fraction", 0)
    return values


def teacher_sources(teacher: str) -> list[str]:
    """The members of a command line's ``teacher``: itself when it names an existing file or folder,
    else its +-joined parts."""
    if Path(teacher).exists() or ENSEMBLE_JOIN not in teacher:
        return [teacher]
    parts = teacher.split(ENSEMBLE_JOIN)
    if "" in parts:
        raise ConfigError(f"teacher {teacher!r}: an empty name between the '+' of an ensemble")
    return parts


def apply(config: TrainConfig, values: dict[str, Any], where: str) -> TrainConfig:
    values = _renamed(values)
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    changes = {k: _coerce(k, v) for k, v in values.items()}
    if isinstance(changes.get("teacher"), str):
        changes["teacher"] = teacher_sources(changes["teacher"])
    for key, value in changes.items():
        if key == "model_options" and not isinstance(value, dict):
            raise ConfigError(f"{where}: model_options must be a mapping")
    return dataclasses.replace(config, **changes)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lr=0.05", "model_options.shortcut=B"]`` -> a dict; dotted keys fill ``model_options``."""
    values: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if key.startswith("model_options."):
            values.setdefault("model_options", {})[key.split(".", 1)[1]] = _yaml_value(value)
        else:
            values[key] = value
    return values


def load_yaml(path: str | Path) -> dict[str, Any]:
    return read_yaml_mapping(path, ConfigError, "config file")


def resolve(recipe: str | None = None, file: str | Path | None = None,
            overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < recipe < file < overrides. The recipe may also be named in the file."""
    from .recipes import recipe_values

    file_values = load_yaml(file) if file else {}
    overrides = dict(overrides or {})
    name = overrides.pop("recipe", None) or recipe or file_values.pop("recipe", None) or "paper"
    file_values.pop("recipe", None)
    config = TrainConfig()
    model = overrides.get("model") or file_values.get("model")
    init_from = overrides.get("init_from") or file_values.get("init_from")
    options = {**_mapping(file_values.get("model_options")), **_mapping(overrides.get("model_options"))}
    # The network decides the paper's warm-up; one taken from an init_from file is already trained.
    network = None if model is None and init_from else _network(str(model or DEFAULT_MODEL), options)
    config = apply(config, {**recipe_values(str(name), network), "recipe": name}, f"recipe {name}")
    config = apply(config, file_values, str(file)) if file_values else config
    if "model_options" in overrides and isinstance(overrides["model_options"], dict):
        overrides["model_options"] = {**config.model_options, **overrides["model_options"]}
    config = apply(config, overrides, "command line") if overrides else config
    if config.init_from and "normalize" not in file_values and "normalize" not in overrides:
        # Weights learnt their features from inputs normalised one way: feed them the same (a recipe's
        # choice is for training from scratch).
        config = dataclasses.replace(config, normalize="weights")
    return config.validate()


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _network(model: str, options: dict[str, Any]) -> "NetSpec | None":
    """The network, whatever it is called (a name, a family plus a depth, a spec file); None when the
    model does not resolve (training then says why, in one line)."""
    from ..models.registry import resolve_spec

    try:
        return resolve_spec(model, **options)
    except (SpecError, TypeError, ValueError):
        return None
