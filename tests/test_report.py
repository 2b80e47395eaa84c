"""Overlay figures (colours, size, orientation, title), case selection, the headline table and the Markdown/HTML report."""

from __future__ import annotations

import re

import matplotlib.image as mpimg
import numpy as np
import pytest
import SimpleITK as sitk

from flareseg.errors import GeometryError, InputError
from flareseg.io import Volume, read_image, read_label
from flareseg.labels import colormap
import flareseg.report as report_module
from flareseg.report import (
    OVERLAY_ALPHA,
    OVERLAY_DPI,
    OVERLAY_FIGSIZE_IN,
    best_and_worst,
    blend,
    headline_table,
    markdown_to_html,
    overlay_figure,
    write_report,
)

from conftest import phantom_ct

EXPECTED_PNG_SHAPE = (round(OVERLAY_FIGSIZE_IN[1] * OVERLAY_DPI), round(OVERLAY_FIGSIZE_IN[0] * OVERLAY_DPI))


def _read_rgb(path) -> np.ndarray:
    """(H, W, 3) uint8 from a PNG (matplotlib reads PNGs as floats in [0, 1])."""
    return np.rint(mpimg.imread(path)[..., :3] * 255).astype(np.int16)


def _blended(label_id: int, grey: float = 0.5) -> np.ndarray:
    """The colour a pixel of `label_id` over a grey level takes, computed here from the definition."""
    colour = colormap()[label_id].astype(float)
    return np.rint(255 * grey * (1 - OVERLAY_ALPHA) + colour * OVERLAY_ALPHA).astype(np.int16)


def _pixels_of(rgb: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """(row, column) of the pixels of `colour` (within 1 per channel)."""
    return np.argwhere(np.all(np.abs(rgb - colour) <= 1, axis=-1))


def _lps_phantom() -> tuple[Volume, np.ndarray]:
    """A uniform 40 HU block (grey 0.5 in the W400/L40 window) with liver on the patient's right
    (low I in LPS) and spleen on the left (high I); anisotropic spacing."""
    shape = (60, 50, 30)
    ct = np.full(shape, 40.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[5:22, 10:40, 5:25] = 1  # liver: patient right
    label[38:55, 10:40, 8:22] = 3  # spleen: patient left
    return Volume(ct, (1.0, 1.2, 2.5), (0.0, 0.0, 0.0), np.eye(3)), label


def test_blend_follows_the_formula():
    grey = np.array([[0.0, 0.5], [1.0, 0.5]], dtype=np.float32)
    labels = np.array([[0, 1], [0, 14]], dtype=np.uint8)
    rgb = blend(grey, labels, 0.45)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[1, 0].tolist() == [255, 255, 255]
    assert np.array_equal(rgb[0, 1], _blended(1))
    assert np.array_equal(rgb[1, 1], _blended(14))


def test_overlay_png_size_and_label_colours_where_the_labels_are(tmp_path):
    image, label = _lps_phantom()
    path = overlay_figure(image, label, label, tmp_path / "sub" / "case.png", title="phantom", dsc=0.9)
    assert path.exists()
    rgb = _read_rgb(path)
    assert rgb.shape[:2] == EXPECTED_PNG_SHAPE
    half = rgb.shape[1] // 2
    liver, spleen = _pixels_of(rgb, _blended(1)), _pixels_of(rgb, _blended(3))
    assert len(liver) > 2000 and len(spleen) > 2000
    assert len(_pixels_of(rgb, _blended(5))) == 0  # aorta is nowhere
    for lo, hi in ((0, half), (half, rgb.shape[1])):  # reference panels, then prediction panels
        in_l = liver[(liver[:, 1] >= lo) & (liver[:, 1] < hi)]
        in_s = spleen[(spleen[:, 1] >= lo) & (spleen[:, 1] < hi)]
        assert len(in_l) > 1000 and len(in_s) > 1000
        # radiological convention: the patient's right (liver) on the left of each panel
        assert in_l[:, 1].mean() < in_s[:, 1].mean()
        # both rows (axial above, coronal below) show both organs
        rows_l = np.unique(in_l[:, 0] > rgb.shape[0] * 0.45)
        assert rows_l.tolist() == [False, True]


def test_overlay_marks_slice_with_most_foreground(tmp_path):
    image, _ = _lps_phantom()
    label = np.zeros(image.shape, dtype=np.uint8)
    label[20:40, 20:30, 3] = 9  # a thin gallbladder on axial slice 3 only
    rgb = _read_rgb(overlay_figure(image, label, label, tmp_path / "thin.png", title="thin"))
    assert len(_pixels_of(rgb, _blended(9))) > 500  # the axial panel shows slice 3, where it is


def test_overlay_without_reference_and_with_bad_shapes(tmp_path):
    image, label = _lps_phantom()
    rgb = _read_rgb(overlay_figure(image, None, label, tmp_path / "noref.png", title="no reference"))
    half = rgb.shape[1] // 2
    liver = _pixels_of(rgb, _blended(1))
    assert len(liver) > 1000 and np.all(liver[:, 1] >= half)  # only the prediction column is coloured
    with pytest.raises(GeometryError, match=r"prediction shape \(60, 50, 29\) differs from the image shape \(60, 50, 30\)"):
        overlay_figure(image, label, label[:, :, :-1], tmp_path / "bad.png", title="bad")
    with pytest.raises(GeometryError, match="reference shape"):
        overlay_figure(image, label[:-1], label, tmp_path / "bad.png", title="bad")
    with pytest.raises(ValueError, match="alpha"):
        overlay_figure(image, label, label, tmp_path / "bad.png", title="bad", alpha=1.5)
    assert not (tmp_path / "bad.png").exists()


def test_sagittal_view_shows_anterior_on_the_left_and_superior_at_the_top(tmp_path):
    image, _ = _lps_phantom()
    label = np.zeros(image.shape, dtype=np.uint8)
    label[20:40, 2:15, 20:28] = 9  # gallbladder: anterior (low J in LPS), superior (high K)
    label[20:40, 35:48, 2:8] = 3  # spleen: posterior, inferior
    rgb = _read_rgb(overlay_figure(image, None, label, tmp_path / "sag.png", title="sagittal", views=("sagittal",)))
    front, back = _pixels_of(rgb, _blended(9)), _pixels_of(rgb, _blended(3))
    assert len(front) > 500 and len(back) > 500
    assert front[:, 1].mean() < back[:, 1].mean()  # anterior on the left
    assert front[:, 0].mean() < back[:, 0].mean()  # superior at the top
    with pytest.raises(ValueError, match="views must be some of axial, coronal, sagittal"):
        overlay_figure(image, None, label, tmp_path / "bad.png", title="bad", views=("oblique",))


def test_the_preview_has_axial_coronal_and_sagittal_rows(tmp_path, monkeypatch):
    from flareseg.outputs import write_case_outputs

    titles = []
    real_save = report_module.save_figure

    def capture(fig, path, **kwargs):
        titles.extend(ax.get_title().split(",")[0] for ax in fig.axes)
        return real_save(fig, path, **kwargs)

    monkeypatch.setattr(report_module, "save_figure", capture)
    image, label = _lps_phantom()
    from flareseg.io import write_volume

    write_volume(image.with_array(label), tmp_path / "seg.nrrd")
    written = write_case_outputs(image, tmp_path / "seg.nrrd", preview=True)
    assert [p.name for p in written] == ["seg_preview.png"]
    assert titles == ["CT: axial", "Prediction: axial", "CT: coronal", "Prediction: coronal", "CT: sagittal", "Prediction: sagittal"]


def _reorient(volume: Volume, code: str) -> Volume:
    return Volume.from_sitk(sitk.DICOMOrient(volume.to_sitk(), code))


@pytest.mark.parametrize("code", ["PLI", "RAS", "ASL", "LPI"])
def test_overlay_is_the_same_in_every_orientation(tmp_path, code):
    image, label = phantom_ct(shape=(40, 36, 30), spacing=(2.0, 1.5, 3.0))
    views = ("axial", "coronal", "sagittal")
    lps = overlay_figure(image, label.array, label.array, tmp_path / "lps.png", title="phantom", dsc=0.5, views=views)
    other_image, other_label = _reorient(image, code), _reorient(label, code)
    assert not np.array_equal(other_image.array, image.array)  # the voxel order really differs
    other = overlay_figure(other_image, other_label.array, other_label.array, tmp_path / f"{code}.png", title="phantom", dsc=0.5, views=views)
    assert np.array_equal(_read_rgb(lps), _read_rgb(other))


def test_overlay_title_says_which_dsc_it_shows(tmp_path, monkeypatch):
    titles = []
    real_save = report_module.save_figure

    def capture(fig, path, **kwargs):
        titles.append(fig.get_suptitle())
        return real_save(fig, path, **kwargs)

    monkeypatch.setattr(report_module, "save_figure", capture)
    image, label = _lps_phantom()
    overlay_figure(image, label, label, tmp_path / "a.png", title="case 7", dsc=0.91234)
    overlay_figure(image, label, label, tmp_path / "b.png", title="case 7", dsc=0.5, score_name="lesion DSC")
    overlay_figure(image, label, label, tmp_path / "c.png", title="case 7", dsc=float("nan"))
    assert titles == ["case 7: mean organ DSC of the case 0.912", "case 7: lesion DSC 0.500", "case 7"]


@pytest.mark.real
def test_real_pli_volume_displays_like_its_lps_copy(real_data, tmp_path):
    folder = real_data / "deeplesion_ct"
    if not (folder / "ct.nii.gz").exists():
        pytest.skip(f"{folder} not found")
    ct = read_image(folder / "ct.nii.gz")
    lesion = read_label(folder / "lesion.nii.gz", ct)
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(ct.direction.ravel())) == "PLI"
    label = lesion.array * np.uint8(14)
    lps_ct = _reorient(ct, "LPS")
    lps_label = _reorient(ct.with_array(label), "LPS").array
    a = overlay_figure(ct, label, label, tmp_path / "pli.png", title="deeplesion")
    b = overlay_figure(lps_ct, lps_label, lps_label, tmp_path / "lps.png", title="deeplesion")
    ra, rb = _read_rgb(a), _read_rgb(b)
    assert np.array_equal(ra, rb)
    cyan = (ra[..., 1] - ra[..., 0] > 80) & (ra[..., 2] - ra[..., 0] > 80)  # lesion (0, 255, 255) over grey
    assert cyan.sum() > 500


# ---------------------------------------------------------------------------------------------- selection


def test_best_and_worst():
    scores = {"a": 0.9, "b": 0.5, "c": 0.95, "d": float("nan"), "e": 0.1, "f": None, "g": 0.5}
    best, worst = best_and_worst(scores, k=2)
    assert best == ["c", "a"]
    assert worst == ["e", "b"]  # ties broken by name
    assert best_and_worst({"x": 1.0, "y": 0.0, "z": 0.5}, k=2) == (["x", "z"], ["y"])  # no overlap
    assert best_and_worst({}, k=2) == ([], [])
    with pytest.raises(ValueError, match="k must be"):
        best_and_worst(scores, k=-1)


# ---------------------------------------------------------------------------------------------- report


def test_write_report_links_and_html(tmp_path):
    out = tmp_path / "run"
    image, label = _lps_phantom()
    inside = overlay_figure(image, label, label, out / "overlays" / "case_1.png", title="case 1")
    outside = overlay_figure(image, None, label, tmp_path / "elsewhere" / "case_2.png", title="case 2")
    other_same_name = overlay_figure(image, label, label, tmp_path / "again" / "case_2.png", title="case 2 bis")
    table = "| Class | DSC | NSD |\n|---|---:|---:|\n| liver | 0.9512 | 0.8810 |\n| **mean** | 0.9 | 0.8 |\n"
    md_path = write_report(
        out,
        title="Phantom run",
        sections=[
            ("Evaluation", "Scores per class, *rounded* to 4 decimals.\n\n" + table, []),
            ("Cases", "- best: `case_1`\n- worst: `case_2`", [inside, outside, other_same_name]),
            ("Empty", "", []),
        ],
    )
    assert md_path == out / "report.md"
    md = md_path.read_text()
    assert md.startswith("# Phantom run\n")
    assert "## Evaluation" in md and table.strip() in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == ["overlays/case_1.png", "figures/case_2.png", "figures/case_2_2.png"]
    for link in links:
        assert (out / link).is_file()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert re.search(r"<th[^>]*>DSC</th>", html) and re.search(r"<td[^>]*>0.9512</td>", html)
    assert "<strong>mean</strong>" in html and "<em>rounded</em>" in html
    assert re.search(r"<li>best: <code>case_1</code></li>", html)
    with pytest.raises(InputError, match="no such file"):
        write_report(out, title="x", sections=[("s", "", [tmp_path / "missing.png"])])


def test_markdown_to_html_escapes_and_keeps_code():
    page = markdown_to_html("a & c\n\n```\nx < 1\n```\n\n1. one\n2. two\n", title="t <1>")
    assert "<p>a &amp; c</p>" in page
    assert "<pre><code>x &lt; 1\n</code></pre>" in page
    assert re.search(r"<ol>\s*<li>one</li>\s*<li>two</li>\s*</ol>", page)
    assert "<title>t &lt;1&gt;</title>" in page


# ---------------------------------------------------------------------------------------------- headline


def test_headline_table_rows_training_and_cpu():
    text = headline_table(
        [
            {"mode": "paper", "organ_dsc": 0.41234, "lesion_dsc": 0.2, "lesion_cases": 4, "median_seconds": 3.14159},
            {"mode": "fast", "organ_dsc": 0.8, "lesion_dsc": 0.35, "lesion_cases": 1, "lesion_sensitivity": 0.5, "median_seconds": 2.5},
        ],
        training={"organ": {"steps_done": 1234, "steps_planned": 6000, "budget_minutes": 10.5},
                  "tumor": {"steps_done": 300, "steps_planned": None, "budget_minutes": 4}},
        cpu="AMD EPYC, 2 logical CPUs; AVX2 yes, AVX-512 no, AMX no",
    )
    lines = text.splitlines()
    assert lines[0] == "| Mode | Mean organ DSC | Lesion DSC, cases with lesions | Lesion sensitivity | Median time per case (s) |"
    assert lines[2] == "| paper | 0.412 | 0.200 (4 cases) | - | 3.14 |"
    assert lines[3] == "| fast | 0.800 | 0.350 (1 case) | 0.500 | 2.50 |"
    assert "| organ | 1,234 / 6,000 | 10.5 |" in lines
    assert "| tumor | 300 / - | 4 |" in lines
    assert lines[-1] == "CPU: AMD EPYC, 2 logical CPUs; AVX2 yes, AVX-512 no, AMX no"
    html = markdown_to_html(text)
    assert html.count("<table>") == 2  # both render as tables


def test_headline_table_leaves_out_what_is_not_given():
    text = headline_table([{"mode": "fast", "organ_dsc": float("nan"), "lesion_dsc": 1.0, "lesion_cases": 0}])
    assert "Lesion sensitivity" not in text and "Model" not in text and "CPU" not in text
    assert text.splitlines()[2] == "| fast | - | - (no case with lesions) | - |"


def test_headline_table_names_bad_input():
    with pytest.raises(InputError, match="no modes"):
        headline_table([])
    with pytest.raises(InputError, match="mode 'fast' has unknown key.s. organ_nsd"):
        headline_table([{"mode": "fast", "organ_nsd": 0.5}])
    with pytest.raises(InputError, match="has no 'mode' name"):
        headline_table([{"organ_dsc": 0.5}])
    with pytest.raises(InputError, match="median_seconds must be a number or None, got '3 s'"):
        headline_table([{"mode": "fast", "median_seconds": "3 s"}])
    with pytest.raises(InputError, match="training 'organ' has unknown key.s. epochs"):
        headline_table([{"mode": "fast"}], training={"organ": {"epochs": 3}})
