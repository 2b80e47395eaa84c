"""Result figures and a run report: label overlays on CT, the run's headline table, and a Markdown/HTML
report of tables and figures.

Overlays are drawn from the canonical LPS orientation (:func:`flareseg.transforms.preprocessing.to_canonical`), so
every input orientation displays the same way: axial slices in radiological convention (seen from the
feet: the patient's right on the left of the image, anterior at the top), coronal slices seen from the
front (the patient's right on the left, superior at the top), sagittal slices seen from the patient's
right (anterior on the left, superior at the top), with the true physical aspect ratio.

No torch here; matplotlib is used through its object API (no pyplot, no global state), so figures can
be drawn from any thread or process.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
import re
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from flareseg.errors import GeometryError, InputError
from flareseg.io import Volume, atomic_write_text, save_figure
from flareseg.labels import BY_ID, colormap

OVERLAY_FIGSIZE_IN = (10.0, 10.0)
"""Size of an overlay figure in inches; at :data:`OVERLAY_DPI` the PNG is 1000 x 1000 pixels."""
OVERLAY_DPI = 100
CT_WINDOW = (400.0, 40.0)
"""Display window (width, level) in HU: abdominal soft tissue, -160 to 240 HU."""
OVERLAY_ALPHA = 0.45
"""Opacity of the label colours over the CT."""
UNKNOWN_LABEL_COLOR = (255, 0, 255)
"""Display colour of label values outside the schema (magenta)."""

Section = tuple[str, str, Sequence["str | os.PathLike[str]"]]
"""One report section: (heading, Markdown text, image paths)."""


# --------------------------------------------------------------------------------------------------
# Overlays


def _label_colors() -> np.ndarray:
    """(256, 3) uint8 display colours by label value; values outside the schema are magenta."""
    lut = np.tile(np.array(UNKNOWN_LABEL_COLOR, dtype=np.uint8), (256, 1))
    known = colormap()
    lut[: len(known)] = known
    return lut


def window_ct(hu: np.ndarray, window: tuple[float, float] = CT_WINDOW) -> np.ndarray:
    """Map HU to grey levels in [0, 1] with a (width, level) window."""
    width, level = window
    if not width > 0:
        raise ValueError(f"window width must be positive, got {width}")
    lo = level - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / np.float32(width), 0.0, 1.0)


def blend(grey: np.ndarray, labels: np.ndarray | None, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Alpha-blend label colours over a grey image.

    Args:
        grey: (H, W) grey levels in [0, 1].
        labels: (H, W) integer labels, or None for the plain grey image.
        alpha: opacity of the label colour where the label is not 0.

    Returns:
        (H, W, 3) uint8 RGB: ``round(255 * grey * (1 - alpha) + colour * alpha)`` on labelled pixels,
        ``round(255 * grey)`` elsewhere.
    """
    base = np.repeat((np.asarray(grey, dtype=np.float32) * 255.0)[..., None], 3, axis=-1)
    if labels is not None:
        mask = labels > 0
        colours = _label_colors()[np.clip(labels[mask], 0, 255).astype(np.intp)].astype(np.float32)
        base[mask] = base[mask] * (1.0 - alpha) + colours * alpha
    return np.clip(np.rint(base), 0, 255).astype(np.uint8)


def _as_array(label: Volume | np.ndarray | None, image: Volume, what: str) -> np.ndarray | None:
    if label is None:
        return None
    array = label.array if isinstance(label, Volume) else np.asarray(label)
    if array.shape != image.shape:
        raise GeometryError(f"{what} shape {array.shape} differs from the image shape {image.shape}")
    return array


def _busiest(mask: np.ndarray, axis: int) -> int:
    """Index along `axis` of the slice with the most foreground; the middle slice if there is none."""
    counts = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    return int(np.argmax(counts)) if counts.any() else mask.shape[axis] // 2


def overlay_figure(
    image: Volume,
    reference: Volume | np.ndarray | None,
    prediction: Volume | np.ndarray,
    path: str | os.PathLike,
    *,
    title: str,
    dsc: float | None = None,
    score_name: str = "mean organ DSC of the case",
    window: tuple[float, float] = CT_WINDOW,
    alpha: float = OVERLAY_ALPHA,
    views: Sequence[str] = ("axial", "coronal"),
) -> Path:
    """Draw the reference and the prediction over the CT, side by side, and save a PNG.

    Rows: one per view of `views` (``axial``, ``coronal``, ``sagittal``), each the slice with the most reference foreground (prediction foreground
    when there is no reference or it is empty; the middle slice when both are empty). Columns: the
    reference and the prediction (the plain CT and the prediction when `reference` is None). Labels in
    the schema's colours (:func:`flareseg.labels.colormap`), a legend of the labels present, and
    L/R, A/P, S/I markers. The PNG is :data:`OVERLAY_FIGSIZE_IN` x :data:`OVERLAY_DPI` pixels.

    Args:
        image: CT in HU, any orientation.
        reference: label map on the image's grid, (I, J, K) array or Volume; or None.
        prediction: label map on the image's grid.
        path: output PNG (written atomically; folders created).
        title: figure title, e.g. the case name.
        dsc: a score to show in the title after `score_name` ("case 7: mean organ DSC of the case 0.912");
            None or NaN shows none.
        score_name: what `dsc` is, as the title says it (default: the mean over the organs of this
            case's DSC; pass e.g. "lesion DSC" for another score).
        window: CT display window (width, level) in HU.
        alpha: label opacity.
        views: the rows, top to bottom (the preview of ``flareseg predict --preview`` shows all three).

    Returns:
        `path`.

    Raises:
        GeometryError: a label map's shape differs from the image's.
        ValueError: `alpha` outside [0, 1] or a non-positive window width.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    unknown = [v for v in views if v not in ("axial", "coronal", "sagittal")]
    if unknown or not views:
        raise ValueError(f"views must be some of axial, coronal, sagittal; got {tuple(views)!r}")
    from flareseg.transforms.preprocessing import to_canonical

    if prediction is None:
        raise ValueError("prediction is required (reference may be None)")
    ref = _as_array(reference, image, "reference")
    pred = _as_array(prediction, image, "prediction")
    ct = to_canonical(image)
    ref_c = None if ref is None else to_canonical(image.with_array(ref.astype(np.uint8))).array
    pred_c = to_canonical(image.with_array(pred.astype(np.uint8))).array
    grey = window_ct(ct.array, window)

    focus = ref_c > 0 if ref_c is not None and ref_c.any() else pred_c > 0
    k = _busiest(focus, axis=2)
    j = _busiest(focus, axis=1)
    i = _busiest(focus, axis=0)
    si, sj, sk = ct.spacing
    ni, nj, nk = ct.shape

    def axial(a: np.ndarray) -> np.ndarray:  # rows: anterior (J=0) to posterior; columns: patient right to left
        return a[:, :, k].T

    def coronal(a: np.ndarray) -> np.ndarray:  # rows: superior to inferior; columns: patient right to left
        return a[:, j, :].T[::-1]

    def sagittal(a: np.ndarray) -> np.ndarray:  # rows: superior to inferior; columns: anterior to posterior
        return a[i, :, :].T[::-1]

    all_rows = {
        "axial": ("axial", f"slice {k + 1}/{nk}", axial, (ni * si, nj * sj), ("R", "L", "A", "P")),
        "coronal": ("coronal", f"slice {j + 1}/{nj}", coronal, (ni * si, nk * sk), ("R", "L", "S", "I")),
        "sagittal": ("sagittal", f"slice {i + 1}/{ni}", sagittal, (nj * sj, nk * sk), ("A", "P", "S", "I")),
    }
    rows = [all_rows[v] for v in views]
    score = "" if dsc is None or not math.isfinite(dsc) else f"{score_name} {dsc:.3f}"
    columns = [("Reference", ref_c), ("Prediction", pred_c)]
    if ref_c is None:
        columns[0] = ("CT", None)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=OVERLAY_FIGSIZE_IN, dpi=OVERLAY_DPI, layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)
    # Row heights follow the physical aspect of each view, so a thin slab's coronal strip takes little room.
    ratios = [max(h / w, 0.12) for (_, _, _, (w, h), _) in rows]
    axes = fig.subplots(len(rows), 2, squeeze=False, gridspec_kw={"height_ratios": ratios})
    for r, (view, where, cut, (width_mm, height_mm), marks) in enumerate(rows):
        for c, (name, labels) in enumerate(columns):
            ax = axes[r][c]
            rgb = blend(cut(grey), None if labels is None else cut(labels), alpha)
            ax.imshow(rgb, extent=(0, width_mm, height_mm, 0), interpolation="nearest", aspect="equal")
            ax.set_title(f"{name}: {view}, {where}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            left, right, top, bottom = marks
            style = dict(color="yellow", fontsize=9, fontweight="bold", transform=ax.transAxes,
                         bbox=dict(facecolor="black", alpha=0.6, pad=1.0, edgecolor="none"))
            ax.text(0.01, 0.5, left, ha="left", va="center", **style)
            ax.text(0.99, 0.5, right, ha="right", va="center", **style)
            ax.text(0.5, 0.99, top, ha="center", va="top", **style)
            ax.text(0.5, 0.01, bottom, ha="center", va="bottom", **style)
    present = sorted(set(np.unique(pred_c).tolist()) | (set() if ref_c is None else set(np.unique(ref_c).tolist())))
    lut = _label_colors()
    handles = [
        Patch(facecolor=lut[v] / 255.0, edgecolor="none", label=f"{v} {BY_ID[v].name}" if v in BY_ID else f"{v} (unknown)")
        for v in present
        if v != 0
    ]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(5, len(handles)), fontsize=9, frameon=False)
    fig.suptitle(f"{title}: {score}" if score else title, fontsize=13)
    return save_figure(fig, path, dpi=fig.dpi)


def best_and_worst(per_case_scores: Mapping[str, float | None], k: int = 2) -> tuple[list[str], list[str]]:
    """The `k` best and `k` worst cases by score, to choose which cases to draw.

    Cases whose score is None or NaN are left out. The two lists do not overlap: with fewer than
    ``2 k`` scored cases the worst list is shorter. Ties are broken by case name.

    Returns:
        (best, worst): best first in `best`, worst first in `worst`.

    Raises:
        ValueError: `k` is negative.
    """
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    scored = [(float(s), c) for c, s in per_case_scores.items() if s is not None and math.isfinite(float(s))]
    best = [c for _, c in sorted(scored, key=lambda sc: (-sc[0], sc[1]))[:k]]
    rest = [sc for sc in scored if sc[1] not in best]
    worst = [c for _, c in sorted(rest)[:k]]
    return best, worst


# --------------------------------------------------------------------------------------------------
# The headline

MODE_KEYS = ("mode", "organ_dsc", "lesion_dsc", "lesion_cases", "lesion_sensitivity", "median_seconds")
"""Keys of one mode's entry in :func:`headline_table`; 'mode' is required, the others may be absent."""
TRAINING_KEYS = ("steps_done", "steps_planned", "budget_minutes")
"""Keys of one model's entry in :func:`headline_table`'s `training`."""


def headline_table(
    modes: Sequence[Mapping[str, object]],
    *,
    training: Mapping[str, Mapping[str, object]] | None = None,
    cpu: str | None = None,
) -> str:
    """The run's headline as Markdown: one row per inference mode, the training done, and the CPU.

    Args:
        modes: one mapping per mode, in display order, with the keys of :data:`MODE_KEYS`:
            ``mode`` (name, required); ``organ_dsc`` (mean organ DSC over the cases); ``lesion_dsc``
            (lesion DSC over the cases whose reference holds lesion voxels, DESIGN 7b) with
            ``lesion_cases`` (how many such cases); ``lesion_sensitivity`` (detected / all reference
            lesions; its column appears only when some mode gives it); ``median_seconds`` (median wall
            time per case, s). An absent, None or NaN value shows as '-'.
        training: model name (e.g. 'organ', 'tumor') -> mapping with the keys of :data:`TRAINING_KEYS`:
            ``steps_done`` and ``steps_planned`` (optimiser steps), ``budget_minutes`` (the wall-time
            budget). None or empty: no training table.
        cpu: a line describing the CPU (e.g. ``flareseg.measure.cpu_info().summary()``); None: none.

    Returns:
        Markdown: the mode table, then the training table and the CPU line when given.

    Raises:
        InputError: `modes` is empty, an entry lacks 'mode' or has a key not listed above (the
            message names it), or a number is not a number.
    """
    if not modes:
        raise InputError("headline_table: no modes given")
    for entry in modes:
        _check_keys(entry, MODE_KEYS, f"mode {entry.get('mode')!r}")
        if "mode" not in entry:
            raise InputError(f"headline_table: a mode entry has no 'mode' name: {dict(entry)}")
    with_sensitivity = any(_number(m.get("lesion_sensitivity"), "lesion_sensitivity") is not None for m in modes)
    head = ["Mode", "Mean organ DSC", "Lesion DSC, cases with lesions"]
    head += ["Lesion sensitivity"] if with_sensitivity else []
    head += ["Median time per case (s)"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for m in modes:
        cells = [str(m["mode"]), _cell(m.get("organ_dsc"), "organ_dsc", "{:.3f}"), _lesion_cell(m)]
        if with_sensitivity:
            cells.append(_cell(m.get("lesion_sensitivity"), "lesion_sensitivity", "{:.3f}"))
        cells.append(_cell(m.get("median_seconds"), "median_seconds", "{:.2f}"))
        lines.append("| " + " | ".join(cells) + " |")
    if training:
        lines += ["", "| Model | Training steps done / planned | Time budget (min) |", "|---|---:|---:|"]
        for name, run in training.items():
            _check_keys(run, TRAINING_KEYS, f"training {name!r}")
            steps = f"{_cell(run.get('steps_done'), 'steps_done', '{:,.0f}')} / {_cell(run.get('steps_planned'), 'steps_planned', '{:,.0f}')}"
            lines.append(f"| {name} | {steps} | {_cell(run.get('budget_minutes'), 'budget_minutes', '{:g}')} |")
    if cpu:
        lines += ["", f"CPU: {cpu}"]
    return "\n".join(lines) + "\n"


def _check_keys(entry: Mapping[str, object], known: Sequence[str], what: str) -> None:
    unknown = sorted(set(entry) - set(known))
    if unknown:
        raise InputError(f"headline_table: {what} has unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")


def _number(value: object, name: str) -> float | None:
    """`value` as a finite float, None for None or NaN; InputError naming `name` for a non-number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"headline_table: {name} must be a number or None, got {value!r}")
    value = float(value)
    return value if math.isfinite(value) else None


def _cell(value: object, name: str, fmt: str) -> str:
    number = _number(value, name)
    return "-" if number is None else fmt.format(number)


def _lesion_cell(m: Mapping[str, object]) -> str:
    cases = _number(m.get("lesion_cases"), "lesion_cases")
    if cases == 0:
        return "- (no case with lesions)"
    text = _cell(m.get("lesion_dsc"), "lesion_dsc", "{:.3f}")
    if cases is not None:
        text += f" ({cases:.0f} case{'s' if cases != 1 else ''})"
    return text


# --------------------------------------------------------------------------------------------------
# The report


def write_report(
    out_dir: str | os.PathLike,
    *,
    title: str,
    sections: Sequence[Section],
    html_file: bool = True,
) -> Path:
    """Write ``report.md`` (and a self-contained ``report.html``) gathering tables and figures.

    Each section is ``(heading, markdown_text, image_paths)``: the text is written as given (tables,
    lists, code; e.g. :func:`headline_table`, an evaluation summary or :func:`flareseg.measure.efficiency_table`), then
    each image as a Markdown image link relative to `out_dir`. Images outside `out_dir` are copied to
    ``out_dir/figures/`` first, so the folder can be moved or archived as a whole. The HTML embeds
    every image (also those the section texts link, when they lie in `out_dir`) as data, so it is
    one file to send.

    Returns:
        The path of ``report.md``.

    Raises:
        InputError: an image does not exist.
    """
    from flareseg import __version__

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = out_dir.resolve()
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()
    lines = [f"# {title}", "", f"*Written by flareseg {__version__} on {stamp}.*", ""]
    used_names: set[str] = set()
    for heading, text, images in sections:
        lines += [f"## {heading}", ""]
        if text.strip():
            lines += [text.rstrip(), ""]
        for image in images:
            rel = _place_image(Path(image), root, used_names)
            lines += [f"![{Path(rel).stem}]({rel})", ""]
    markdown = "\n".join(lines)
    md_path = out_dir / "report.md"
    atomic_write_text(md_path, markdown)
    if html_file:
        atomic_write_text(out_dir / "report.html", markdown_to_html(markdown, title=title, base_dir=root, embed_images=True))
    return md_path


def _place_image(image: Path, root: Path, used_names: set[str]) -> str:
    """Relative POSIX link from `root` to `image`, copying it under root/figures when it lies outside."""
    if not image.is_file():
        raise InputError(f"report image {image}: no such file")
    resolved = image.resolve()
    try:
        return resolved.relative_to(root).as_posix()
    except ValueError:
        pass
    figures = root / "figures"
    figures.mkdir(exist_ok=True)
    name, n = image.name, 1
    while name in used_names or ((figures / name).exists() and not _same_file(figures / name, resolved)):
        n += 1
        name = f"{image.stem}_{n}{image.suffix}"
    used_names.add(name)
    shutil.copyfile(resolved, figures / name)
    return f"figures/{name}"


def _same_file(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


# --------------------------------------------------------------------------------------------------
# Markdown to a standalone HTML page (the `markdown` package, with its tables extension).

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 72rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: 0 0.2rem; border-radius: 3px; }
pre { background: #f6f6f6; padding: 0.8rem; overflow-x: auto; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5rem 0; }
"""

_IMG_SRC = re.compile(r'(<img\b[^>]*\bsrc=")([^"]+)(")')
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml", ".gif": "image/gif"}


def markdown_to_html(text: str, *, title: str = "", base_dir: Path | None = None, embed_images: bool = False) -> str:
    """Convert Markdown to a standalone HTML page.

    With `embed_images`, relative image links that resolve to files under `base_dir` become data URIs,
    so the page is self-contained.
    """
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code"])
    if embed_images and base_dir is not None:
        body = _IMG_SRC.sub(lambda m: m.group(1) + _embedded(html.unescape(m.group(2)), base_dir) + m.group(3), body)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _embedded(src: str, base_dir: Path) -> str:
    """`src` as a data URI when it names an image file under `base_dir`, else `src` unchanged."""
    if "://" in src or src.startswith("data:"):
        return src
    file = (base_dir / src).resolve()
    mime = _MIME.get(file.suffix.lower())
    if not (mime and file.is_file() and file.is_relative_to(base_dir.resolve())):
        return src
    return f"data:{mime};base64," + base64.b64encode(file.read_bytes()).decode("ascii")
