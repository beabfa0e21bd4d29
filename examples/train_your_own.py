"""Train a model of your own on a distilled set, with the pipeline's student recipe (MixUp + KL at temperature T).

    make run                                                         # writes runs/quickstart
    .venv/bin/python examples/train_your_own.py runs/quickstart/distilled
    .venv/bin/python examples/train_your_own.py s3://bucket/run1/distilled --model resnet10t --epochs 100

The model is any timm architecture, built for the set's classes and channels; here it gets the
set's normalisation in front, as the pipeline's own models do. It is tested on the real test
set of the run the set was made in (or the prepare-data artifact given with --test-data).
"""
from __future__ import annotations

import argparse
import time

import timm
import torch
from torch import nn

from infer_distill import DistilledSet
from infer_distill.config import StudentConfig
from infer_distill.models import Normalize
from infer_distill.training import train_student_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("distilled", help="the soft-label artifact of a run (local path or s3://bucket/prefix)")
    p.add_argument("--model", default="resnet10t", help="a timm architecture (default: resnet10t)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--test-data", help="prepare-data artifact to test on (default: the one the set was made from)")
    args = p.parse_args()

    started = time.perf_counter()
    ds = DistilledSet.open(args.distilled)
    images, soft_labels, _ = ds.tensors()
    test_x, test_y = ds.read_test_split(args.test_data)

    torch.manual_seed(args.seed)
    net = timm.create_model(args.model, pretrained=False, num_classes=len(ds.classes), in_chans=images.shape[1])
    model = nn.Sequential(Normalize(ds.mean, ds.std), net)
    recipe = StudentConfig(epochs=args.epochs)          # the pipeline's defaults: AdamW, cosine, batch 64, MixUp 0.8
    result = train_student_model(model, images, soft_labels, None, test_x, test_y, recipe, args.epochs, ds.temperature,
                                 (ds.crop_padding, ds.hflip), args.device, args.seed, desc=args.model)
    best_epoch, best_acc = result.best
    print(f"{args.model} ({sum(p.numel() for p in net.parameters()):,} parameters) trained on {len(ds)} distilled instances "
          f"for {args.epochs} epochs: {100 * result.final_acc:.2f} % test accuracy at the last epoch "
          f"({100 * best_acc:.2f} % best, epoch {best_epoch}); {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
