"""The report's figures as PNG bytes: UFC examples, student curves, feature similarities."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from infer_distill.method.synthesis import class_batch_index, compose  # noqa: E402
from infer_distill.outputs.report import METHOD_ORDER


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed): every plot of the report and the benchmarks."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def ufc_examples_png(natural: torch.Tensor, ufc: torch.Tensor, classes: list[str], teachers: list[str],
                     classes_per_ufc: int | None, subset: int = 0, max_classes: int = 10) -> bytes:
    """Columns: classes of one subset; rows: the natural image, then natural + UFC of each teacher.

    Classes run across, so the strip stays as short as the teachers are few: a page shows it without
    pushing what follows out of view.
    """
    nat = natural[subset].float() / 255.0                                   # [C, ch, H, W]
    composed = compose(nat.unsqueeze(0), ufc[subset], class_batch_index(len(classes), classes_per_ufc))  # [M, C, ...]
    n = min(max_classes, len(classes))
    rows = 1 + len(teachers)
    fig, axes = plt.subplots(rows, n, figsize=(0.8 * n + 1.2, 0.8 * rows), squeeze=False)
    for r in range(rows):
        for c in range(n):
            img = nat[c] if r == 0 else composed[r - 1, c]
            ax = axes[r][c]
            ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(classes[c], fontsize=6)
            if c == 0:
                ax.set_ylabel("natural" if r == 0 else f"+UFC\n{teachers[r - 1]}", fontsize=6, rotation=0, ha="right", va="center")
    return figure_png(fig)


def student_curves(students: list[dict], baselines: list[dict] = (), methods: list[dict] = (), full_data: list[dict] = ()):
    """Test accuracy over the epochs of every student a report has (each row's "curve": [epoch, accuracy] pairs):
    INFER's solid, the baselines dashed, the peer methods' dash-dotted, the full-data references dotted."""
    fig, ax = plt.subplots(figsize=(7, 3.5))

    def draw(run: dict, style: str, label: str) -> None:
        epochs, accs = zip(*run["curve"])
        ax.plot(epochs, [100 * a for a in accs], style, label=label, lw=1)

    for s in students:
        draw(s, "-", f"{s['arch']} INFER {s['label_mode']} seed {s['seed']}")
    for b in baselines:
        draw(b, "--", f"{b['arch']} {b['baseline']} seed {b['seed']}")
    for m in methods:
        draw(m, "-.", f"{m['arch']} {m['method']} {m['score']} labels, equal {m['protocol']}, seed {m['seed']}")
    for f in full_data:
        draw(f, ":", f"{f['arch']} full data")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    ax.set_xlabel("epoch"), ax.set_ylabel("test top-1 (%)"), ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes: many students hide no curve
    return fig


def student_curves_png(students: list[dict], baselines: list[dict] = (), methods: list[dict] = (),
                       full_data: list[dict] = ()) -> bytes:
    return figure_png(student_curves(students, baselines, methods, full_data))


def similarity_png(similarities: dict[str, dict]) -> bytes:
    """The distributions of `methods.feature_similarity` of every method, same-class and cross-class side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=False)
    for ax, part, title in zip(axes, ("same_class", "cross_class"), ("same class", "different classes")):
        for name, f in sorted(similarities.items(), key=lambda kv: METHOD_ORDER.get(kv[0], 99)):
            counts = torch.tensor(f[part]["histogram"], dtype=torch.float64)
            if counts.sum() > 0:
                edges = torch.linspace(-1, 1, len(counts) + 1)
                ax.stairs((counts / counts.sum()).tolist(), edges.tolist(), label=name)
        ax.set_title(title)
        ax.set_xlabel("cosine similarity")
    axes[0].set_ylabel("fraction of pairs")
    axes[1].legend()
    return figure_png(fig)


