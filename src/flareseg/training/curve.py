"""The training curve: loss and learning rate, validation Dice per class and mean, against the epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from flareseg.io import save_figure
from flareseg.labels import BY_NAME

CURVE_FILE = "training_curve.png"


def write_training_curve(rows: Sequence[Mapping[str, Any]], path: Path, *, title: str = "") -> None:
    """Plot the log `rows` into a PNG at `path`, atomically.

    Left: training loss (Dice + CE) and, on a second axis, the learning rate. Right: the validation
    Dice of each foreground class (thin lines in the class colour, labelled with the class short
    name, e.g. ``RK``) and their mean (black). Epoch axes carry integer ticks only.

    Args:
        rows: log rows (:func:`flareseg.training.checkpoint.read_log`): ``epoch``, ``train_loss``,
            ``lr``, and for validated epochs ``val_dice`` {class name: Dice} and ``val_mean_dice``.
        path: the PNG to write.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 4.5), dpi=100)
    ax_loss, ax_dice = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], color="tab:blue", label="train loss (Dice + CE)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_lr = ax_loss.twinx()
    ax_lr.plot(epochs, [r["lr"] for r in rows], color="tab:gray", linestyle=":", label="learning rate")
    ax_lr.set_ylabel("learning rate", color="tab:gray")
    handles = ax_loss.get_legend_handles_labels()[0] + ax_lr.get_legend_handles_labels()[0]
    ax_loss.legend(handles=handles, loc="upper right", fontsize="small")
    validated = [r for r in rows if "val_mean_dice" in r]
    if validated:
        ve = [r["epoch"] for r in validated]
        for name in validated[-1]["val_dice"]:
            cls = BY_NAME.get(name)
            color = tuple(c / 255 for c in cls.color) if cls is not None else None
            values = [r["val_dice"].get(name, float("nan")) for r in validated]
            ax_dice.plot(ve, values, color=color, linewidth=1.0, alpha=0.8, label=cls.short if cls is not None else name)
        ax_dice.plot(ve, [r["val_mean_dice"] for r in validated], color="black", linewidth=2, marker="o", label="mean")
        ax_dice.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", title="class")
    ax_dice.set_ylim(0, 1)
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("validation Dice")
    ax_dice.grid(alpha=0.3)
    for ax in (ax_loss, ax_dice):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
