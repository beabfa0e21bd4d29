"""Train a model of your own on a distilled set, with the run's own student recipe (MixUp + KL at temperature T).

    infer-distill run --config quickstart --out runs/quickstart       # a run, and its distilled set
    python -m infer_distill.examples.train_your_own runs/quickstart/distilled
    python -m infer_distill.examples.train_your_own s3://bucket/run1/distilled --model resnet10t --epochs 30
    python -m infer_distill.examples.train_your_own runs/quickstart/distilled --labels hard   # cross-entropy on the classes

The recipe is `infer_distill.method.training.train_student_model` with the run's `students` settings
(epochs, batch size, learning rate, weight decay, MixUp), read from the report of the run beside
the set, or from the run's config given with --config; --epochs overrides the epochs alone.
`--labels hard` trains the same way on the instances' classes with plain cross-entropy and no
MixUp (`train_student_hard`): the set's hard-label score, for comparison with the soft labels.
The model is any timm architecture, built for the set's classes and channels; here it gets the
set's normalisation in front, as the pipeline's own models do. It is tested on the real test
set of the run the set was made in (or the prepare-data artifact given with --test-data).
"""
from __future__ import annotations

import argparse
import sys
import time

import timm
import torch
from torch import nn

from infer_distill import DistilledSet
from infer_distill.config.loading import load_config
from infer_distill.config.schema import StudentConfig
from infer_distill.errors import ArtifactError, ConfigError
from infer_distill.method.training import Held, train_student_hard, train_student_model
from infer_distill.models.networks import Normalize


def student_recipe(ds: DistilledSet, config: str | None) -> tuple[StudentConfig, str]:
    """The run's student settings and where they came from: its config file if given, else its report."""
    if config:
        return load_config(config).students, config
    return ds.student_recipe(), ds.neighbour("report")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infer_distill.examples.train_your_own", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("distilled", help="the soft-label artifact of a run (local path or s3://bucket/prefix)")
    p.add_argument("--model", default="resnet10t", help="a timm architecture (default: resnet10t)")
    p.add_argument("--config", help="the run's config, for a set whose run report is not beside it")
    p.add_argument("--epochs", type=int, help="default: the run's students.epochs")
    p.add_argument("--labels", choices=["soft", "hard"], default="soft",
                   help="soft: the set's soft labels (MixUp + KL, the pipeline's students); hard: cross-entropy on the classes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--test-data", help="prepare-data artifact to test on (default: the one the set was made from)")
    args = p.parse_args(argv)

    started = time.perf_counter()
    try:
        ds = DistilledSet.open(args.distilled)
        recipe, source = student_recipe(ds, args.config)
        test = Held(*ds.read_test_split(args.test_data))
    except (ArtifactError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    epochs = args.epochs or recipe.epochs
    images, soft_labels, labels = ds.tensors()
    print(f"recipe from {source}: {epochs} epochs, batch {recipe.batch_size}, AdamW lr {recipe.lr:g} weight decay "
          f"{recipe.weight_decay:g}, " + (f"MixUp {recipe.mixup_alpha:g}, KL at T = {ds.temperature:g}" if args.labels == "soft"
                                          else "cross-entropy on the classes"))

    torch.manual_seed(args.seed)
    net = timm.create_model(args.model, pretrained=False, num_classes=len(ds.classes), in_chans=images.shape[1])
    model = nn.Sequential(Normalize(ds.mean, ds.std), net)
    augment = (ds.crop_padding, ds.hflip)
    if args.labels == "soft":
        result = train_student_model(model, images, soft_labels, None, test, recipe, epochs, ds.temperature,
                                     augment, args.device, args.seed, desc=args.model)
    else:
        result = train_student_hard(model, images, labels, test, recipe, epochs, augment, args.device, args.seed,
                                    desc=f"{args.model} (hard labels)")
    best_epoch, best_acc = result.best
    print(f"{args.model} ({sum(p.numel() for p in net.parameters()):,} parameters) trained on {len(ds)} distilled instances "
          f"with {args.labels} labels for {epochs} epochs: {100 * result.final_acc:.2f} % test accuracy at the last epoch "
          f"({100 * best_acc:.2f} % best, epoch {best_epoch}); {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
