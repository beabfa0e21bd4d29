"""The datasheet that travels with an exported set.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePath

import torch

from infer_distill import __version__
from infer_distill.config.schema import StudentConfig
from infer_distill.errors import ArtifactError
from infer_distill.method.peers import DESCRIPTIONS
from infer_distill.outputs.distilled import DistilledSet, _find_artifact, run_report, soft_labels_f32, to_uint8

# ----------------------------------------------------------------------------------------
# The datasheet
# ----------------------------------------------------------------------------------------

# dataset.name values that say how the data is read, not which data it is: the source is named by its root.
READERS = ("imagefolder", "hf")


def source_title(dataset: dict) -> str:
    """The source dataset as the datasheet's title (and a Hugging Face card's) names it: a built-in dataset by its
    name; one read from a folder, an archive or the Hub by its root (a folder's or archive's name, or the Hub id),
    with the reader in brackets."""
    root = (dataset.get("root") or "").rstrip("/")
    if dataset["name"] not in READERS or not root:
        return dataset["name"]
    local = root.startswith(("/", ".", "~")) or "\\" in root or root.endswith(".zip")  # a Hub id is owner/name
    return f"{PurePath(root).name.removesuffix('.zip') if local else root} ({dataset['name']})"


def content_sha256(ds: DistilledSet) -> dict[str, str]:
    """Checksums of what an export holds, independent of its format: the 8-bit images [N, ch, H, W]
    and the float32 soft labels [N, C], as C-order little-endian bytes in instance order."""
    pixels = ds.images if ds.images.dtype == torch.uint8 else to_uint8(ds.images)
    return {"images": hashlib.sha256(pixels.numpy().tobytes()).hexdigest(),
            "soft_labels": hashlib.sha256(soft_labels_f32(ds).tobytes()).hexdigest()}


def _teacher_accuracies(ds: DistilledSet) -> list[float | None]:
    """Each teacher's test accuracy from its train-teacher artifact, where one made with these settings can be read."""
    recorded = ds.manifest["inputs"].get("teachers", [])
    accs: list[float | None] = []
    for m, settings in enumerate(ds.manifest["settings"]["teachers"]):
        candidates = recorded[m : m + 1] + [ds.neighbour(f"teachers/{settings['arch']}")]
        found = _find_artifact(candidates, "train-teacher", lambda s, t=settings: s.get("teacher") == t)
        accs.append(found[1]["metrics"]["test_acc"] if found else None)
    return accs


def _recipe(ds: DistilledSet) -> tuple[StudentConfig, str]:
    """The student recipe the datasheet states, and where its numbers come from."""
    try:
        return ds.student_recipe(), "read from the run's report"
    except ArtifactError:
        return StudentConfig(), "infer-distill's defaults: no report of the run beside the set records its own settings"


def _pct(x: float | None) -> str:
    return "not recorded" if x is None else f"{100 * x:.2f} %"


@dataclass(frozen=True)
class _Provenance:
    """What the datasheet says of how the set was made: INFER's (soft-label) or a peer method's (distill-method)."""

    by: str               # "distilled with ..." (the method and where it is published)
    instances: str        # what every instance is
    hard_label: str       # what its hard label is the class of
    pixels: str           # what the export's 8-bit PNGs are of the set's images
    rows: list[str]       # the rows of the source and budget table on the method, its teachers and its structure
    stored: str           # what the stored bytes are made of
    slots: str            # the export's file names: what <slot> and <teacher> say
    teacher: str          # the export's teacher column


def _made_by(ds: DistilledSet) -> _Provenance:
    m, settings = ds.manifest, ds.manifest["settings"]
    b = m["metrics"]["budget"]
    teachers = ", ".join(f"{a} ({_pct(acc)} test accuracy)" for a, acc in zip(ds.teacher_archs, _teacher_accuracies(ds)))
    if m["stage"] == "soft-label":
        return _Provenance(
            by="distilled with INFER (\"Breaking Class Barriers: Efficient Dataset Distillation via Inter-Class Feature "
               "Compensator\", Zhang et al., ICLR 2025, arXiv 2408.06927)",
            instances="Every instance is a real training image (natural) or the same image plus a Universal Feature "
                      "Compensator (UFC) synthesised against one teacher, clipped to [0, 1].",
            hard_label="the class of the real image",
            pixels="**8-bit images.** The export quantises every composed image to 8 bits, round(255 x), as PNG does: pixels "
                   "are within half an 8-bit step of the set's float images (natural images are exact, they are 8-bit). "
                   "`infer_distill.DistilledSet` gives the unquantised float images.",
            rows=[f"| teachers (M = {len(ds.teacher_archs)}) | {teachers} |",
                  f"| images per class (ipc) | {b['ipc']} |",
                  f"| natural subsets (K) | {b['num_subsets']}, one real image per class each |",
                  f"| UFCs | {b['num_ufcs']} (K x M x {b['class_batches']} per subset and teacher), stored as {b['ufc_dtype']} |"],
            stored="natural images, UFCs and labels as the pipeline stores them",
            slots="`<slot>` 0 for the natural image and m + 1 for teacher m, `<teacher>` the architecture whose UFC it "
                  "carries, or `natural`",
            teacher="the architecture whose UFC it carries, or `natural`")
    method = settings["method"]
    name, published, instance = DESCRIPTIONS[method]
    own = settings.get(method) or {}  # the method's own settings (rded, sre2l)
    # what distill-method recorded of how the method chose (herding's features, the candidates RDED had; not SRe2L's per-row losses)
    recorded = {k: m["metrics"][k] for k in ("features", "rded_candidates") if k in m["metrics"]}
    method_settings = ", ".join([f"{k} {v}" for k, v in own.items()] + [f"{k.replace('_', ' ')}: {v}" for k, v in recorded.items()]
                                + [f"seed {settings['seed']}"])
    return _Provenance(
        by=f"made with {name} ({published}), a method infer-distill compares INFER with at equal stored bytes,",
        instances=f"Every instance is {instance}, stored as 8-bit pixels.",
        hard_label="the class it was made for",
        pixels="**8-bit images.** The set stores every image as 8 bits, so the export's PNGs are its images exactly.",
        rows=[f"| method | {name} ({method}): {method_settings} |",
              f"| labelling teachers | {teachers} |",
              f"| images per class (ipc) | {b['ipc']}: the budget whose INFER set's stored bytes this set may take, "
              f"{b['budget_bytes']:,} bytes |",
              f"| instances per class | {b['num_subsets']}, as many as fit in those bytes with their soft labels |"],
        stored="images and labels as the pipeline stores them, within the byte budget above",
        slots="`<slot>` 0 and `<teacher>` `natural` for every image (no teacher adds anything to this set's images)",
        teacher="`natural` for every image")


def datasheet(ds: DistilledSet, fmt: str, with_test: bool) -> str:
    """DATASHEET.md: what the set is, where it comes from, what it costs, how to check it and how to train on it."""
    m, settings = ds.manifest, ds.manifest["settings"]
    b = m["metrics"]["budget"]
    n, (ch, h, w), c = len(ds), ds.images.shape[1:], len(ds.classes)
    dataset = settings["dataset"]
    source = dataset["name"] + (f" (root {dataset['root']})" if dataset.get("root") else "")
    limits = ", ".join(f"{k} {dataset[k]}" for k in ("train_per_class", "test_per_class", "image_size") if dataset.get(k))
    made = _made_by(ds)
    found = run_report(ds)
    report = found["metrics"]["report"] if found else None
    recipe, recipe_source = _recipe(ds)
    if m["stage"] == "soft-label":
        students = [f"{s['arch']}, {s['label_mode']} labels, {len(s['seeds'])} seed(s): {_pct(s['final_acc_mean'])} final epoch"
                    + (f" (± {100 * s['final_acc_std']:.2f} over seeds)" if len(s["seeds"]) > 1 else "")
                    + f", {_pct(s['best_acc_mean'])} best over epochs"
                    for s in (report or {}).get("student_summary", [])]
        students += [f"baseline {s['arch']}, {s['description']}: {_pct(s['final_acc_mean'])} final epoch"
                     for s in (report or {}).get("baseline_summary", [])]
    else:  # the report's method table: this method's scores
        students = [f"{r['arch']}, {score} labels, equal {r['protocol']}, {len(r[score]['seeds'])} seed(s): "
                    f"{_pct(r[score]['mean'])} final epoch"
                    for r in (report or {}).get("methods", []) if r["method"] == settings["method"]
                    for score in ("soft", "hard") if r.get(score)]
    sums = content_sha256(ds)
    source_files = "\n".join(f"| `{name}` | `{entry['sha256']}` | {entry['bytes']:,} |" for name, entry in sorted(m["files"].items()))
    layout = _LAYOUT[fmt].format(n=n, c=c, ch=ch, h=h, w=w, test=_TEST_LAYOUT[fmt] if with_test else "",
                                 slots=made.slots, teacher=made.teacher)
    loader = _LOADER[fmt].format(n=n, ch=ch, h=h, w=w)
    settings_code = ", ".join(f"{k}={v!r}" for k, v in recipe.model_dump(include=set(_RECIPE_KEYS)).items())
    lines = [
        f"# Distilled set: {source_title(dataset)}, {n // c} training instances per class (budget: {b['ipc']} images per class)",
        "",
        f"{n:,} training instances of {c} classes, {ch}x{h}x{w} pixels, {made.by} "
        f"by infer-distill {m.get('infer_distill_version', '?')}; exported by infer-distill {__version__}.",
        "",
        f"{made.instances} Its label is the teachers' mean logits on it "
        f"(soft label, use at temperature {ds.temperature:g}); {made.hard_label} is its hard label.",
        "",
        made.pixels,
        "",
        "## Contents",
        "",
        layout,
        "",
        f"Instance order: {m['metrics']['instance_order']}. Classes (index = label): "
        + ", ".join(f"{i} {name}" for i, name in enumerate(ds.classes[:20])) + (f", ... ({c} in all)" if c > 20 else "") + ".",
        "",
        "## Source and budget",
        "",
        "| | |",
        "|---|---|",
        f"| source dataset | {source}{', ' + limits if limits else ''} |",
        *made.rows,
        f"| soft labels | {b['num_instances']:,} x {c}, stored as {b['label_dtype']} |",
        f"| bytes stored | {b['stored_bytes']:,} ({made.stored}) |",
        f"| compression ratio | {b['compression_ratio']:.4f} of the {b['train_bytes']:,} bytes of training images |",
        f"| student accuracy (real test set) | {'; '.join(students) if students else 'not recorded (no report of this run beside the set)'} |",
        f"| normalisation | mean {_floats(ds.mean)}, std {_floats(ds.std)} (per channel, pixels in [0, 1]) |",
        f"| augmentation the students train with | random crop with padding {ds.crop_padding}, horizontal flip {'on' if ds.hflip else 'off'} |",
        f"| config fingerprint | `{m['fingerprint']}` (seed {m.get('seed')}, made {m.get('created_at', '?')}) |",
        "",
        "## Checksums",
        "",
        f"Source artifact `{ds.uri}` ({m['stage']} stage):",
        "",
        "| file | sha256 | bytes |",
        "|---|---|---|",
        source_files,
        "",
        "Content of this export, whatever its format (sha256 of C-order, little-endian bytes in instance order):",
        "",
        f"- images, uint8 [{n}, {ch}, {h}, {w}]: `{sums['images']}`",
        f"- soft labels, float32 [{n}, {c}]: `{sums['soft_labels']}`",
        "",
        "## Training on it with soft labels",
        "",
        f"The recipe of the run's students ({recipe_source}): {recipe.epochs} epochs in batches of {recipe.batch_size}, "
        f"AdamW (learning rate {recipe.lr:g}, weight decay {recipe.weight_decay:g}) with a cosine schedule to zero over all "
        f"steps, random crop (padding {ds.crop_padding}) and {'horizontal flip' if ds.hflip else 'no flip'}, MixUp "
        f"(alpha {recipe.mixup_alpha:g}) of images and logits alike, and the loss KL(softmax(z_teacher / T) || "
        f"softmax(z_student / T)) at T = {ds.temperature:g}, averaged over the batch, with no T^2 factor.",
        "",
        "With infer-distill installed, that is `train_student_model` with these settings "
        "(`python -m infer_distill.examples.train_your_own` trains any timm model this way):",
        "",
        "```python",
        _LIBRARY.format(uri=ds.uri, settings=settings_code),
        "```",
        "",
        "Without it, the same recipe in plain PyTorch, from this folder:",
        "",
        "```python",
        loader,
        _TRAIN.format(mean=list(ds.mean), std=list(ds.std), temperature=ds.temperature, padding=ds.crop_padding, hflip=ds.hflip,
                      **recipe.model_dump(include=set(_RECIPE_KEYS))),
        "```",
        "",
        "To compare with ordinary training, train on the same images with their hard labels (cross-entropy on "
        + ("the class folders); in infer-distill, `dataset.name: imagefolder` with `dataset.root` at this folder reads "
           "train/ and test/ as they are." if fmt == "imagefolder" and with_test else
           "the class folders); in infer-distill, `dataset.name: imagefolder` reads train/<class>/ beside a test/<class>/ "
           "split of real images (`export --include-test` writes one)." if fmt == "imagefolder" else
           "the `label` column); in infer-distill, `dataset.name: hf` with `dataset.root` at this folder reads its train and "
           "test splits." if fmt == "hf" and with_test else "the `label` column)." if fmt == "hf" else "`labels`)."),
        "",
    ]
    return "\n".join(lines)


def _floats(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


_LAYOUT = {
    "imagefolder": (
        "- `train/<class>/<subset>_<slot>_<teacher>.png`: the {n:,} instances, lossless PNG ({ch} channel(s), {h}x{w}); "
        "`<subset>` is k (4 digits), {slots}. Class folders sort in label order (names that would not are prefixed with "
        "their label), so torchvision's `ImageFolder` target is the label\n"
        "- **Row order: the order `torchvision.datasets.ImageFolder(\"train\")` reads the files** (class folders sorted, "
        "then file names sorted), so its sample j pairs with row j of each of these three:\n"
        "- `instances.csv`: file, label, class, subset, teacher, instance (the index in `DistilledSet` and in the "
        "checksums below)\n"
        "- `soft_labels.npy`: float32 [{n}, {c}], row j the soft label of `instances.csv` row j\n"
        "- `train/metadata.jsonl`: file_name, label, soft_label, subset, teacher per image, the columns "
        "`datasets.load_dataset(\"imagefolder\", data_dir=...)` adds to the images\n"
        "- `classes.json`: class names, index = label{test}"
    ),
    "npz": (
        "`distilled.npz` (`numpy.load(path, allow_pickle=False)`): `images` uint8 [{n}, {ch}, {h}, {w}], "
        "`soft_labels` float32 [{n}, {c}], `labels`, `subsets`, `teachers` int64 [{n}] (teacher -1: natural), "
        "`teacher_archs`, `classes` (index = label), `mean`, `std`, `datasheet` (this text){test}."
    ),
}
_LAYOUT["hf"] = (
    "A `datasets.DatasetDict` written with `save_to_disk` (`datasets.load_from_disk(\"path/to/this/folder\")`): split "
    "`train` holds the {n:,} instances in instance order, with columns `image` (lossless PNG, {ch} channel(s), {h}x{w}), "
    "`label` (ClassLabel, the class names), `soft_label` (float32 [{c}], the logits), `subset` (k) and `teacher` ({teacher}){test}. This card is its README.md; to publish it, "
    "`datasets.load_from_disk(folder).push_to_hub(\"you/name\")` with a Hugging Face token, then upload README.md."
)
_TEST_LAYOUT = {
    "imagefolder": "\n- `test/<class>/<index>.png`: the real test split the set was made for, to measure accuracy on",
    "npz": "; `test_images` uint8, `test_labels` int64: the real test split the set was made for",
    "hf": "; split `test` (image, label): the real test split the set was made for",
}
_LOADER = {
    "imagefolder": (
        "import csv\n"
        "import numpy as np, torch, torch.nn.functional as F\n"
        "from PIL import Image\n"
        "\n"
        "def load():\n"
        "    rows = list(csv.DictReader(open(\"instances.csv\")))\n"
        "    pixels = np.stack([np.array(Image.open(r[\"file\"])) for r in rows]).reshape({n}, {h}, {w}, {ch})\n"
        "    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255    # [N, ch, H, W] in [0, 1]\n"
        "    return images, torch.from_numpy(np.load(\"soft_labels.npy\"))\n"
    ),
    "hf": (
        "import numpy as np, torch, torch.nn.functional as F\n"
        "from datasets import load_from_disk\n"
        "\n"
        "def load():\n"
        "    train = load_from_disk(\".\")[\"train\"]\n"
        "    pixels = np.stack([np.array(image) for image in train[\"image\"]]).reshape({n}, {h}, {w}, {ch})\n"
        "    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255    # [N, ch, H, W] in [0, 1]\n"
        "    return images, torch.tensor(np.array(train[\"soft_label\"], dtype=np.float32))\n"
    ),
    "npz": (
        "import numpy as np, torch, torch.nn.functional as F\n"
        "\n"
        "def load():\n"
        "    arrays = np.load(\"distilled.npz\", allow_pickle=False)\n"
        "    images = torch.from_numpy(arrays[\"images\"]).float() / 255              # [N, ch, H, W] in [0, 1]\n"
        "    return images, torch.from_numpy(arrays[\"soft_labels\"])\n"
    ),
}
# The student settings the datasheet states (StudentConfig's training keys; archs, seeds and baselines are the run's choices).
_RECIPE_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "mixup_alpha", "eval_every")
_LIBRARY = (
    "from infer_distill import DistilledSet\n"
    "from infer_distill.config import StudentConfig\n"
    "from infer_distill.method.training import Held, train_student_model\n"
    "\n"
    "ds = DistilledSet.open({uri!r})      # or this export's source artifact, wherever it is now\n"
    "recipe = StudentConfig({settings})   # ds.student_recipe() reads them from the run's report\n"
    "images, soft_labels, _ = ds.tensors()\n"
    "test = Held(*ds.read_test_split())   # the real test split: images, labels\n"
    "result = train_student_model(model, images, soft_labels, None, test, recipe, recipe.epochs, ds.temperature,\n"
    "                             (ds.crop_padding, ds.hflip), \"cpu\", seed=0)   # model: yours, normalising its input\n"
    "print(result.final_acc, result.best)"
)
_TRAIN = (
    "def crop_flip(x, padding={padding}, hflip={hflip}):\n"
    "    \"\"\"Each image: a random crop of it zero-padded by `padding`, then (if hflip) a horizontal flip with p = 0.5.\"\"\"\n"
    "    h, w = x.shape[-2:]\n"
    "    padded = F.pad(x, [padding] * 4)\n"
    "    out = torch.empty_like(x)\n"
    "    for i in range(len(x)):\n"
    "        top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()\n"
    "        out[i] = padded[i, :, top:top + h, left:left + w]\n"
    "        if hflip and torch.rand(()) < 0.5:\n"
    "            out[i] = out[i].flip(-1)\n"
    "    return out\n"
    "\n"
    "def train(model, epochs={epochs}, batch_size={batch_size}, lr={lr!r}, weight_decay={weight_decay!r}, mixup_alpha={mixup_alpha!r},\n"
    "          temperature={temperature!r}, seed=0):\n"
    "    \"\"\"`model` maps normalised images [B, ch, H, W] to logits [B, C]; the defaults are the run's student settings.\"\"\"\n"
    "    images, soft = load()\n"
    "    mean, std = torch.tensor({mean}).view(1, -1, 1, 1), torch.tensor({std}).view(1, -1, 1, 1)\n"
    "    torch.manual_seed(seed)\n"
    "    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)\n"
    "    steps = epochs * -(-len(images) // batch_size)\n"
    "    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)\n"
    "    model.train()\n"
    "    for _ in range(epochs):\n"
    "        for idx in torch.randperm(len(images)).split(batch_size):\n"
    "            x, z = crop_flip(images[idx]), soft[idx]\n"
    "            lam = float(torch.distributions.Beta(mixup_alpha, mixup_alpha).sample()) if mixup_alpha > 0 else 1.0\n"
    "            perm = torch.randperm(len(idx))\n"
    "            x, z = lam * x + (1 - lam) * x[perm], lam * z + (1 - lam) * z[perm]   # MixUp images and logits alike\n"
    "            log_p = F.log_softmax(model((x - mean) / std) / temperature, 1)\n"
    "            loss = F.kl_div(log_p, F.softmax(z / temperature, 1), reduction=\"batchmean\")\n"
    "            opt.zero_grad()\n"
    "            loss.backward()\n"
    "            opt.step()\n"
    "            sched.step()\n"
    "    return model"
)
