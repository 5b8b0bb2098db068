"""Regenerate the reference fixtures under ``tests/fixtures/`` with torchvision and timm themselves.

The tests compare densegraph against models that torchvision and timm build and save, so the fixtures must
come from those libraries, not from densegraph. They need torch 2.14.1 (torchvision 0.29.x, timm 1.0.x), so run
this in a separate virtual environment::

    python3 -m venv /tmp/ref && . /tmp/ref/bin/activate
    pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.31
    python tools/make_fixtures.py            # writes tests/fixtures/

Each model gets random weights and random BatchNorm statistics and affine (so BN folding is exercised), is put in
eval mode, and is saved as ``NAME.pth`` (its state_dict), ``NAME.json`` (how it was made) and ``NAME-io.pt``
(``{"input": [2,3,64,64], "output": [2,classes]}``). torchvision's also gets ``-legacy-keys.pth``, the same
state_dict in the old ``norm.1`` key style of torchvision's published ImageNet files. A new run draws new random
numbers (``--seed``), so the files change but the tests do not: they only compare a library with densegraph.
The TensorRT API text under ``tests/fixtures/tensorrt-api/`` comes from ``tools/tensorrt_api.sh``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
BATCHNORM = "running_mean U(-0.2,0.2), running_var U(0.5,1.5), weight U(0.5,1.5), bias U(-0.2,0.2)"


def _randomize_batchnorm(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)


def _save(name: str, model: torch.nn.Module, meta: dict, out: Path) -> None:
    _randomize_batchnorm(model)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
    torch.save(model.state_dict(), out / f"{name}.pth")
    torch.save({"input": x, "output": y}, out / f"{name}-io.pt")
    meta = {**meta, "params": sum(p.numel() for p in model.parameters()), "input_shape": list(x.shape),
            "output_shape": list(y.shape), "eval": True, "batchnorm": BATCHNORM}  # fmt: skip
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")


def torchvision_tiny(out: Path) -> None:
    import torchvision

    args = dict(growth_rate=8, block_config=(2, 3, 2), num_init_features=16, bn_size=4, drop_rate=0.0,
                num_classes=10)  # fmt: skip
    model = torchvision.models.DenseNet(**args)
    meta = {"made_by": f"torchvision {torchvision.__version__}, torch {torch.__version__}",
            "constructor": "torchvision.models.DenseNet", "arguments": args}  # fmt: skip
    _save("torchvision-tiny-densenet", model, meta, out)
    # torchvision's published ImageNet files spell `norm1` as `norm.1` (its loader rewrites them with a regex)
    legacy = {re.sub(r"\.(norm|relu|conv)(\d)\.", r".\1.\2.", k): v for k, v in model.state_dict().items()}
    torch.save(legacy, out / "torchvision-tiny-densenet-legacy-keys.pth")


def timm_tiny(out: Path) -> None:
    import timm
    from timm.layers import BlurPool2d
    from timm.models.densenet import DenseNet
    from timm.models.vovnet import VovNet

    made = {"timm": timm.__version__, "torch": torch.__version__}
    deep = dict(growth_rate=8, block_config=(2, 3), num_classes=10, stem_type="deep")
    _save("timm-tiny-densenet-deep", DenseNet(**deep), {"class": "timm.models.densenet.DenseNet", "args": deep,
          **made}, out)  # fmt: skip
    blur = {**deep, "aa_layer": BlurPool2d}
    blur_meta = {**deep, "aa_layer": "timm.layers.BlurPool2d"}
    _save("timm-tiny-densenet-blur", DenseNet(**blur), {"class": "timm.models.densenet.DenseNet",
          "args": blur_meta, **made}, out)  # fmt: skip
    cfg = dict(stem_chs=[16, 16, 32], stage_conv_chs=[16, 16, 24, 24], stage_out_chs=[32, 32, 48, 64],
               layer_per_block=3, block_per_stage=[1, 1, 1, 2], residual=False, depthwise=False, attn="")  # fmt: skip
    _save("timm-tiny-vovnet", VovNet(cfg, num_classes=10), {"class": "timm.models.vovnet.VovNet",
          "args": {"cfg": cfg, "num_classes": 10}, **made}, out)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT, help="folder to write (default: tests/fixtures)")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed before each model")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    torchvision_tiny(args.out)
    torch.manual_seed(args.seed)
    timm_tiny(args.out)


if __name__ == "__main__":
    main()
