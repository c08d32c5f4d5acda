"""Export the backbone (image -> pooled feature) to TorchScript and ONNX, checked against PyTorch on
real images, with the preprocessing its input needs written beside it as JSON.

    python -m tools.export --model_path CKPT --images DIR --out PREFIX [--formats torchscript,onnx]

Writes PREFIX.pt (TorchScript: torch.jit.load), PREFIX.onnx (onnxruntime; needs onnx and onnxruntime,
`pip install -r requirements-optional.txt`, for this command only) and PREFIX.json: the image size,
resize, channel order, layout, mean and std that make the input, the output's size, and each export's
largest difference from the PyTorch model on the --images, relative to the features' scale. Every file
is written to a temporary name first and renamed into place only once every requested format has
passed its check: a failure leaves no new file, and the files already at PREFIX as they were.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

import util
from dataset.folder import list_images, load_image
from dataset.transforms import normalize_batch
from tools.backbone import Backbone, add_backbone_args, load_backbone

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
# The packages a format needs beyond requirements.txt; requirements-optional.txt lists them.
OPTIONAL_PACKAGES = {"onnx": ("onnx", "onnxruntime")}
ONNX_OPSET = 17


class Features(nn.Module):
    """The exported function: normalised (N, 3, H, W) float32 images -> (N, feature_dim) pooled features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)


def get_args_parser() -> argparse.ArgumentParser:
    parser = util.ArgumentParser("python -m tools.export", description=__doc__.split("\n\n")[0])
    add_backbone_args(parser, runtime=False)
    g = parser.add_argument_group("export")
    g.add_argument("--images", required=True, nargs="+",
                   help="real images the exports are checked on: folders, .txt lists or image files")
    g.add_argument("--check_images", type=int, default=32, help="how many of --images the check runs on (the first)")
    g.add_argument("--out", required=True, help="writes PREFIX.pt, PREFIX.onnx and PREFIX.json")
    g.add_argument("--formats", default="torchscript,onnx",
                   help="comma-separated: torchscript, onnx (onnx needs `pip install -r requirements-optional.txt`)")
    g.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest difference from the PyTorch model's features an export may show, relative to their "
                        "scale: max |export - pytorch| / max |pytorch| over the checked images")
    return parser


def preprocessing(backbone: Backbone) -> dict:
    """What a consumer without this repository does to an image file to make the exported model's input."""
    size = backbone.image_size
    return {"image_size": size, "resize": f"the whole image to {size}x{size} (PIL Image.BILINEAR), no crop",
            "color": "RGB (grey, palette and RGBA images converted with PIL's Image.convert('RGB'))",
            "channel_order": "RGB", "layout": "NCHW", "dtype": "float32",
            "scale": "pixel / 255", "mean": list(backbone.norm.mean), "std": list(backbone.norm.std),
            "formula": "x[n, c, h, w] = (pixel[h, w, c] / 255 - mean[c]) / std[c]"}


def export_torchscript(module: Features, example: torch.Tensor, path: Path) -> Callable:
    traced = torch.jit.trace(module, example, check_trace=False)
    traced.save(str(path))
    loaded = torch.jit.load(str(path))
    return lambda x: loaded(x).numpy()


def export_onnx(module: Features, example: torch.Tensor, path: Path) -> Callable:
    import onnx  # optional: check_optional_packages has made sure both import
    import onnxruntime
    # The TorchScript-based exporter: it needs no onnxscript, and a batch axis of any size.
    torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=["features"],
                      dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, opset_version=ONNX_OPSET,
                      dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["features"], {"images": x.numpy()})[0]


EXPORTERS = {"torchscript": export_torchscript, "onnx": export_onnx}


def check_optional_packages(formats: list[str]) -> None:
    """Refuse, before anything is read or written, a format whose optional packages do not import."""
    for name in formats:
        for package in OPTIONAL_PACKAGES.get(name, ()):
            try:
                importlib.import_module(package)
            except ImportError:
                raise util.UsageError(f"--formats {name}: needs the package {package}, which is not installed: pip "
                                      f"install -r requirements-optional.txt (or leave {name} out of --formats)"
                                      ) from None


def difference(output: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(max |output - reference|, the same over max |reference|). The check uses the second: float32 rounding
    grows with the values, so features of 2e3 differ by 1e-3 after a mere reordering of sums while features
    of 1 differ by 1e-7; a NaN gives NaN, which no tolerance accepts."""
    absolute = float(np.abs(output - reference).max())
    scale = float(np.abs(reference).max())
    if scale == 0:  # an all-zero output: only an exact match passes
        return absolute, 0.0 if absolute == 0 else math.inf
    return absolute, absolute / scale


def write_and_check(name: str, model: Features, images: torch.Tensor, reference: np.ndarray, *, tmp: Path,
                    target: Path, tolerance: float) -> dict:
    """Export `model` as `name` to the temporary file `tmp` (renamed to `target` by the caller once every format
    has passed) and check it on `images`; raises UsageError if it differs by more than `tolerance`."""
    # torch.onnx names the file by its suffix-less path as given: the staged name keeps the suffix.
    staged = tmp.with_name(tmp.name + FORMATS[name])
    try:
        with warnings.catch_warnings():
            # torch marks torch.jit and its TorchScript-based ONNX exporter deprecated; both still
            # write files that load in this and later releases, and need no onnxscript.
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
            run = EXPORTERS[name](model, images[:2], staged)
        absolute, relative = difference(run(images), reference)
        staged.replace(tmp)
    finally:
        staged.unlink(missing_ok=True)
    print(f"{name}: {target}: max abs difference from PyTorch {absolute:.2e}, {relative:.1e} of the largest |value| "
          f"{np.abs(reference).max():.3g}, on {len(images)} images (features {reference.shape[1]}-d)")
    if not relative <= tolerance:
        raise util.UsageError(f"{name}: the export differs from the PyTorch model by {relative:.1e} of the features' "
                              f"scale > --tolerance {tolerance:g}; nothing written")
    return {"file": target.name, "max_abs_difference": absolute, "relative_difference": relative,
            "checked_images": len(images)}


def describe(backbone: Backbone, formats: list[str], feature_dim: int, checks: dict) -> dict:
    """PREFIX.json: the checkpoint, the input's preprocessing, the output and each export's check."""
    return {"checkpoint": str(backbone.path), "checkpoint_sha256": util.file_sha256(backbone.path),
            "model": backbone.model_name, "source_dataset": backbone.source_dataset,
            "source_domain": backbone.source_domain,
            "input": {"name": "images", **preprocessing(backbone)},
            "output": {"name": "features", "shape": ["N", feature_dim],
                       "note": "the pooled features; the few-shot evaluation L2-normalises them before its logistic "
                               "regression"},
            "onnx_opset": ONNX_OPSET if "onnx" in formats else None, "torch": torch.__version__, "exports": checks}


def make_folder(folder: Path) -> list[Path]:
    """Create `folder` with its parents; returns those it created, deepest first, to remove if the export fails."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return created


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise util.UsageError(f"--formats {args.formats}: expected a comma-separated list of {', '.join(FORMATS)}")
    check_optional_packages(formats)
    util.check_positive(vars(args), "check_images")
    out = Path(args.out)
    util.check_writable_folder(out.parent, "--out")
    paths = list_images(args.images)[:args.check_images]
    # Exports are traced, and checked, on the CPU in fp32: the files are the same on every machine.
    args.device, args.amp = "cpu", "off"
    device = torch.device("cpu")
    print(f"device: {util.describe_device(device, 'cpu')} (exports are traced and checked on the CPU, in fp32)")
    backbone = load_backbone(args, device)
    model = Features(backbone.model.to(memory_format=torch.contiguous_format)).eval()
    pixels = torch.from_numpy(np.stack([load_image(p, backbone.image_size) for p in paths]))
    images = normalize_batch(pixels, backbone.norm).contiguous()
    with torch.no_grad():
        reference = model(images).numpy()
    created = make_folder(out.parent)
    try:
        # Each file goes to a temporary name; leaving the stack without an error renames them all into place
        # (the JSON, entered first, last), an error removes them all: a failed check leaves neither a half
        # export nor a changed old file.
        with contextlib.ExitStack() as staged, torch.no_grad():
            described = staged.enter_context(util.atomic_write(out.with_name(out.name + ".json")))
            checks = {}
            for name in formats:
                target = out.with_name(out.name + FORMATS[name])
                tmp = staged.enter_context(util.atomic_write(target))
                checks[name] = write_and_check(name, model, images, reference, tmp=tmp, target=target,
                                                 tolerance=args.tolerance)
            info = describe(backbone, formats, int(reference.shape[1]), checks)
            described.write_text(json.dumps(info, indent=2) + "\n")
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):  # not empty: something else wrote there meanwhile
                folder.rmdir()
        raise
    print(f"preprocessing: {out}.json")
    return info


if __name__ == "__main__":
    util.run_cli(main)
