"""Write scikit-learn's 8x8 digits as an image folder (OUT/<digit>/<n>.png), the layout of a user's own
images: the small real dataset of the transfer measurement in docs/results.md ("Transfer: CIFAR-10
features on handwritten digits").

    python scripts/digits_folder.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from reslab.data.digits import load_digits


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    out = Path(sys.argv[1])
    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.labels.tolist())):
        folder = out / digits.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"{index:04d}.png")
    print(f"wrote {len(digits)} images in {len(digits.classes)} class folders under {out}")


if __name__ == "__main__":
    main()
