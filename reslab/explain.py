"""Grad-CAM (Selvaraju et al. 2017): where in an image a network found its evidence for a class.

For a feature map ``A`` (K channels) and a class score ``y`` (the logit, before softmax), each channel
is weighted by the spatial mean of ``dy/dA_k`` and the weighted sum is passed through a ReLU:
``ReLU(sum_k mean(dy/dA_k) * A_k)`` (paper Eq. 1 and 2). The ReLU keeps only the places that raise
the score. For reslab's head (global average pool, then a linear layer) the gradient is the same at
every place, so on the last stage Grad-CAM is CAM (Zhou et al. 2016) up to scale (paper Sec. 3.1).

The map is taken at the output of a named module, by default the last stage: the place where the
head reads its features, whatever the blocks inside are (basic, bottleneck, plain, or blocks whose
normalisation sits elsewhere).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .checkpoint import Checkpoint
from .data.augment import preprocess_eval
from .errors import ConfigError, DataError
from .fileio import atomic_write_bytes
from .data.images import expand_paths, load_images


@dataclass(frozen=True)
class GradCam:
    layer_map: torch.Tensor  # (h, w) at the layer's resolution, scaled to [0, 1]; all zeros when nothing raises the score
    logits: torch.Tensor  # (num_classes,)
    class_index: int


@dataclass(frozen=True)
class Explanation:
    image: str
    layer: str
    class_name: str
    class_index: int
    probability: float
    predicted: str
    layer_map: torch.Tensor  # (h, w), [0, 1]
    heatmap: torch.Tensor  # (size, size): the map upsampled onto the model's input, [0, 1]
    pixels: torch.Tensor  # uint8 (C, size, size): the image exactly as the model saw it

    @property
    def peak(self) -> tuple[int, int] | None:
        """(row, column) of the map's highest point in the model's input; None for an empty map."""
        if float(self.heatmap.max()) <= 0:
            return None
        row, col = divmod(int(self.heatmap.argmax()), self.heatmap.shape[1])
        return row, col

    def to_dict(self, decimals: int = 3) -> dict:
        peak = self.peak
        return {"image": self.image, "layer": self.layer, "class": self.class_name, "class_index": self.class_index,
                "probability": self.probability, "predicted": self.predicted,
                "map_size": list(self.heatmap.shape), "layer_map_size": list(self.layer_map.shape),
                "peak": None if peak is None else {"row": peak[0], "col": peak[1]},
                "map": _rounded(self.heatmap, decimals), "layer_map": _rounded(self.layer_map, decimals)}


def _rounded(values: torch.Tensor, decimals: int) -> list[list[float]]:
    return np.round(values.numpy().astype(np.float64), decimals).tolist()


def default_layer(model: nn.Module) -> str:
    """The last stage's name (``stages.N``), or the stem for a network without stages."""
    stages = getattr(model, "stages", None)
    return f"stages.{len(stages) - 1}" if stages is not None and len(stages) else "stem"


def find_class(classes: list[str], wanted: str) -> int:
    """A class by its name or, when no class is called that, by its index."""
    if wanted in classes:
        return classes.index(wanted)
    if wanted.isdigit() and int(wanted) < len(classes):
        return int(wanted)
    shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
    raise ConfigError(f"--class {wanted}: not one of the model's classes ({shown}) nor an index 0-{len(classes) - 1}")


def grad_cam(model: nn.Module, inputs: torch.Tensor, layer: str, class_index: int | None = None) -> GradCam:
    """Grad-CAM of one preprocessed image (1, C, H, W) at the output of the module named ``layer``, for
    ``class_index`` (default: the predicted class). ``model`` should be in eval mode."""
    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise ConfigError(f"--layer {layer}: no such module in {type(model).__name__} (e.g. stem, "
                          f"{default_layer(model)}, stages.0.blocks.0)")
    seen: list[torch.Tensor] = []

    def keep_output(_module: nn.Module, _inputs: tuple, output: object) -> object:
        if not (isinstance(output, torch.Tensor) and output.ndim == 4):
            return None
        seen.append(output)
        # Later layers get a copy: an in-place op downstream (a block's ReLU) must not change the
        # tensor the gradient is taken against.
        return output.clone()

    handle = module.register_forward_hook(keep_output)
    try:
        with torch.enable_grad():
            logits = model(inputs.detach().requires_grad_(True))[0]
            if not seen:
                raise ConfigError(f"--layer {layer}: its output is not a feature map (N, C, H, W); "
                                  f"try {default_layer(model)}")
            chosen = int(logits.argmax()) if class_index is None else class_index
            activations = seen[-1]
            (gradients,) = torch.autograd.grad(logits[chosen], activations)
    finally:
        handle.remove()
    channel_weights = gradients[0].float().mean((1, 2))  # paper Eq. 1: global average of the gradients
    cam = F.relu(torch.einsum("k,khw->hw", channel_weights, activations[0].detach().float()))
    return GradCam(_unit_scaled(cam), logits.detach().float(), chosen)


def _unit_scaled(cam: torch.Tensor) -> torch.Tensor:
    # Divided by the maximum (not min-max): zero keeps meaning "no evidence here", and a map with no
    # positive evidence anywhere stays all zeros instead of having noise stretched to [0, 1].
    top = float(cam.max())
    return cam / top if top > 0 else torch.zeros_like(cam)


def explain(checkpoint: Checkpoint, image: str | Path, class_name: str | None = None,
            layer: str | None = None) -> Explanation:
    """Grad-CAM of one image file, read and preprocessed as ``reslab predict`` reads it."""
    path = Path(image)
    if path.is_dir():
        raise DataError(f"{path}: a folder; explain takes one image file")
    pixels = load_images(expand_paths([path]), checkpoint.spec.in_channels, checkpoint.input_size)
    wanted = None if class_name is None else find_class(checkpoint.classes, class_name)
    model = checkpoint.build_model()
    layer = layer or default_layer(model)
    result = grad_cam(model, preprocess_eval(pixels, checkpoint.normalizer), layer, wanted)
    size = pixels.shape[-2:]
    upsampled = F.interpolate(result.layer_map[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    probabilities = result.logits.softmax(0)
    return Explanation(image=str(path), layer=layer, class_name=checkpoint.classes[result.class_index],
                       class_index=result.class_index, probability=float(probabilities[result.class_index]),
                       predicted=checkpoint.classes[int(probabilities.argmax())], layer_map=result.layer_map,
                       heatmap=_unit_scaled(upsampled), pixels=pixels[0])


# ---- drawing: the input beside the same input under the map ------------------------------------

# A blue -> cyan -> yellow -> red scale (cold to hot), as (position, RGB) anchors.
_HEAT_ANCHORS = ((0.0, (0, 0, 140)), (0.15, (0, 0, 255)), (0.4, (0, 255, 255)), (0.65, (255, 255, 0)),
                 (0.9, (255, 0, 0)), (1.0, (140, 0, 0)))


def heat_colours(values: np.ndarray) -> np.ndarray:
    """(..., 3) float RGB in [0, 255] for values in [0, 1]."""
    positions = [p for p, _ in _HEAT_ANCHORS]
    return np.stack([np.interp(values, positions, [rgb[i] for _, rgb in _HEAT_ANCHORS]) for i in range(3)], -1)


def render(explanation: Explanation, min_side: int = 256, gap: int = 8) -> Image.Image:
    """The input (enlarged by a whole factor to about ``min_side`` pixels, nearest neighbour, so each
    pixel the model saw stays a sharp square) and, beside it, the same image under the heat map."""
    pixels = explanation.pixels.expand(3, -1, -1) if explanation.pixels.shape[0] == 1 else explanation.pixels[:3]
    side = pixels.shape[-1]
    scale = max(1, round(min_side / side))
    shown = (side * scale, pixels.shape[-2] * scale)
    base = Image.fromarray(pixels.permute(1, 2, 0).numpy()).resize(shown, Image.NEAREST)
    heat = np.asarray(Image.fromarray(explanation.heatmap.numpy().astype(np.float32))
                      .resize(shown, Image.BILINEAR)).clip(0, 1)[..., None]
    # Cold places stay mostly visible; hot ones take most of their colour from the map.
    alpha = 0.25 + 0.5 * heat
    overlay = (1 - alpha) * np.asarray(base, dtype=np.float32) + alpha * heat_colours(heat[..., 0])
    canvas = Image.new("RGB", (2 * shown[0] + gap, shown[1]), (255, 255, 255))
    canvas.paste(base, (0, 0))
    canvas.paste(Image.fromarray(overlay.round().astype(np.uint8)), (shown[0] + gap, 0))
    return canvas


def image_format(path: str | Path) -> str:
    """Pillow's format for the output file's suffix, or one line saying which suffixes work."""
    Image.init()
    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise ConfigError(f"--out {path}: not an image file name (use .png, or .jpg, .webp, ...)")
    return fmt


def save_render(explanation: Explanation, path: str | Path, min_side: int = 256) -> Path:
    buffer = io.BytesIO()
    render(explanation, min_side).save(buffer, format=image_format(path))
    return atomic_write_bytes(buffer.getvalue(), Path(path))
