"""The README's picture: one crop of a photo, noisy / each shipped denoiser / clean.

    python tools/figure_denoisers.py PHOTO -o docs/kodak-denoisers.png
        [--crop X,Y,SIZE] [--noise gaussian:25] [--seed 0] [--specs noise2noise,unet]

The whole photo is noised (the seed and the photo's index 0 give the same noise as
``--eval`` on a folder whose first photo it is) and denoised by each network with its
shipped weights; then the same crop of each is laid side by side, labelled with its
PSNR over the whole photo.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from n2ngraph import compile, load_spec  # noqa: E402
from n2ngraph.app import pretrained  # noqa: E402
from n2ngraph.app import data as datasets  # noqa: E402
from n2ngraph.app.images import denoise  # noqa: E402
from n2ngraph.app.metrics import psnr  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photo")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--crop", default="0,0,160", help="X,Y,SIZE of the square crop shown")
    p.add_argument("--noise", default="gaussian:25")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--specs", default="noise2noise,unet")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = datasets.load_photo(args.photo)
    noisy = datasets.parse_noise(args.noise).apply(clean[None], torch.Generator().manual_seed(args.seed * 7919))
    reference = clean[None].double() / 255
    panels = [("noisy", noisy[0], psnr(noisy.double() / 255, reference))]
    for name in args.specs.split(","):
        spec = load_spec(pretrained.spec_path(name))
        model = compile(spec, None)
        model.load_state_dict(pretrained.load_pretrained(name))
        out = denoise(model, spec, noisy)
        panels.append((name, out[0], psnr(out.double() / 255, reference)))
    panels.append(("clean", clean, None))
    x, y, size = (int(v) for v in args.crop.split(","))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.2), dpi=100)
    for ax, (label, image, value) in zip(axes, panels):
        ax.imshow(image[:, y:y + size, x:x + size].permute(1, 2, 0).numpy())
        ax.set_title(label if value is None else f"{label}\n{value:.2f} dB", fontsize=10)
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{n} {v:.2f} dB" for n, _, v in panels if v is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
