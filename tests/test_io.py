
import os

import numpy as np
import pytest
import SimpleITK as sitk

from flareseg.errors import GeometryError, InputError
from flareseg.io import Volume, orientation_code, read_image, read_label, write_label, write_volume

from conftest import REAL_CASES, phantom_ct


def _write_raw(array, path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


def test_round_trip_keeps_geometry(tmp_path):
    direction = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, -1]], dtype=float)
    image, label = phantom_ct(direction=direction, origin=(10.0, -20.0, 30.0))
    path = write_volume(image, tmp_path / "ct.nii.gz")
    back = read_image(path)
    assert back.same_grid(image)
    np.testing.assert_allclose(back.array, image.array, atol=1e-3)
    assert orientation_code(back.direction) == orientation_code(direction)
    out = write_label(label.array, back, tmp_path / "seg.nii.gz")
    seg = read_label(out, back)
    np.testing.assert_array_equal(seg.array, label.array)


def test_array_order_is_nibabel_order(tmp_path):
    import nibabel as nib

    image, _ = phantom_ct(shape=(20, 16, 12))
    path = write_volume(image, tmp_path / "ct.nii.gz")
    nib_array = np.asanyarray(nib.load(str(path)).dataobj)
    assert nib_array.shape == (20, 16, 12)
    np.testing.assert_allclose(read_image(path).array, nib_array, atol=1e-3)


def _with_nan():
    array = np.linspace(-1000, 1000, 512, dtype=np.float32).reshape(8, 8, 8)
    array[3, 3, 3] = np.nan
    return array


def _with_overflow():
    array = np.linspace(-1000, 1000, 512).reshape(8, 8, 8)  # float64
    array[3, 3, 3] = 1e300
    return array


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: _write_raw(np.zeros((8, 8), np.int16) - 1000, p / "flat.nii.gz"), "3-D"),
        (lambda p: _write_raw(np.zeros((2, 3, 8, 8), np.int16) - 500, p / "four.nii.gz"), "3-D"),
        (lambda p: _write_raw(np.random.rand(8, 8, 8).astype(np.float32), p / "unit.nii.gz"), "Hounsfield"),
        (lambda p: _write_raw(_with_nan(), p / "nan.nii.gz"), "non-finite"),
        (lambda p: _write_raw(_with_overflow(), p / "overflow.nii.gz"), "float32 range"),
        (lambda p: (p / "empty.nii.gz").write_bytes(b"") or p / "empty.nii.gz", "empty"),
        (lambda p: (p / "missing.nii.gz"), "no such file"),
        (lambda p: (p / "emptydir").mkdir() or p / "emptydir", "empty"),
        (lambda p: (p / "notes.txt").write_text("hello") and p / "notes.txt", "unsupported"),
    ],
)
def test_bad_inputs_raise_input_error_naming_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InputError) as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert message.lower() in str(info.value).lower()


@pytest.fixture(params=["isal", "python"])
def gzip_reader(request, monkeypatch):
    """Both .nii.gz readers: ISA-L's where installed (flareseg[fast-gzip]), and Python's gzip it falls back to."""
    import flareseg.io.read as read

    if request.param == "isal":
        pytest.importorskip("isal")
    else:
        monkeypatch.setattr(read, "_gzip_reader", lambda: ((lambda path: __import__("gzip").open(path, "rb")), ()))
    return request.param


def test_both_gzip_readers_read_the_voxels_exactly(tmp_path, gzip_reader):
    image, _ = phantom_ct()
    back = read_image(write_volume(image, tmp_path / "ct.nii.gz"))
    np.testing.assert_array_equal(back.array, image.array)
    assert back.grid.matches(image.grid)


def test_truncated_file(tmp_path, gzip_reader):
    image, _ = phantom_ct()
    path = write_volume(image, tmp_path / "ct.nii.gz")
    data = path.read_bytes()
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.nii.gz"):
        read_image(truncated)
    full = write_volume(image, tmp_path / "full.nii")
    raw = tmp_path / "cut.nii"
    raw.write_bytes(full.read_bytes()[:5000])
    with pytest.raises(InputError, match="cut.nii"):
        read_image(raw)


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_missing_or_negative_spacing_rejected(tmp_path, value):
    import struct

    image, _ = phantom_ct()
    path = write_volume(image, tmp_path / "ct.nii")
    header = bytearray(path.read_bytes())
    header[84:88] = struct.pack("<f", value)  # pixdim[2]
    bad = tmp_path / "nospacing.nii"
    bad.write_bytes(bytes(header))
    with pytest.raises(InputError, match="nospacing.nii.*spacing"):
        read_image(bad)


def test_a_header_spacing_that_spans_metres_is_refused_before_reading(tmp_path):
    import struct

    image, _ = phantom_ct()
    path = write_volume(image, tmp_path / "ct.nii")
    header = bytearray(path.read_bytes())
    header[80:92] = struct.pack("<3f", 100.0, 100.0, 100.0)  # pixdim[1:4]: metres of CT in a few voxels
    bad = tmp_path / "metres.nii"
    bad.write_bytes(bytes(header))
    with pytest.raises(InputError, match=r"metres.nii: the volume spans 4,000 x .* a CT spans at most ~2,000 mm"):
        read_image(bad)


def test_a_sheared_affine_is_named_as_such(tmp_path):
    import nibabel as nib

    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[0, 1] = 0.5  # the second voxel axis leans on the first
    nib.save(nib.Nifti1Image(np.full((8, 8, 4), -1000, np.int16), affine), tmp_path / "sheared.nii.gz")
    with pytest.raises(InputError, match="sheared.nii.gz: the header's voxel axes are not perpendicular"):
        read_image(tmp_path / "sheared.nii.gz")


def test_label_geometry_mismatch_names_both(tmp_path):
    image, label = phantom_ct()
    write_volume(image, tmp_path / "ct.nii.gz")
    moved = Volume(label.array, label.spacing, (0.0, 0.0, 5.0), label.direction)
    write_volume(moved, tmp_path / "seg.nii.gz")
    ref = read_image(tmp_path / "ct.nii.gz")
    with pytest.raises(GeometryError) as info:
        read_label(tmp_path / "seg.nii.gz", ref, reference_path=tmp_path / "ct.nii.gz")
    assert "seg.nii.gz" in str(info.value) and "ct.nii.gz" in str(info.value)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    image, _ = phantom_ct()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", boom)
    with pytest.raises(RuntimeError):
        write_volume(image, tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", sorted(REAL_CASES))
def test_real_samples_read_with_labels_on_their_grid(real_data, name):
    image_rel, label_rel = REAL_CASES[name]
    image = read_image(real_data / image_rel)
    label = read_label(real_data / label_rel, image, reference_path=real_data / image_rel)
    assert image.array.ndim == 3 and image.array.min() <= -900
    assert label.array.max() >= 1


def test_dicom_series_is_jpeg2000_and_lps(real_data):
    image = read_image(real_data / "totalsegmentator_dicom" / "dicom")
    assert image.shape == (512, 512, 20)
    assert orientation_code(image.direction) == "LPS"
    np.testing.assert_allclose(image.spacing, (0.977, 0.977, 2.0), atol=1e-3)


def test_deeplesion_is_pli(real_data):
    image = read_image(real_data / "deeplesion_ct" / "ct.nii.gz")
    assert orientation_code(image.direction) == "PLI"


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    image, _ = phantom_ct()
    path = write_volume(image, tmp_path / "ct.nii.gz")
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask


def test_stale_temporaries_of_dead_writers_go_and_live_ones_stay(tmp_path):
    import subprocess

    from flareseg.io import atomic_output, remove_stale_temporaries

    child = subprocess.Popen(["true"])
    child.wait()
    target = tmp_path / "case.nii.gz"
    dead = tmp_path / f".case.nii.gz.{child.pid}-0123abcd.tmp.nii.gz"
    live = tmp_path / f".case.nii.gz.{os.getppid()}-0123abcd.tmp.nii.gz"  # the parent process is alive
    other = tmp_path / f".other.nii.gz.{child.pid}-0123abcd.tmp.nii.gz"
    for p in (dead, live, other):
        p.write_bytes(b"x")
    assert remove_stale_temporaries(target) == 1
    assert not dead.exists() and live.exists() and other.exists()
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert not target.exists() and not tmp.exists()


def test_a_refused_write_publishes_nothing(tmp_path):
    from flareseg.io import atomic_output

    target = tmp_path / "out.bin"

    def refuse(tmp):
        raise OSError(28, "short write")

    with pytest.raises(OSError):
        with atomic_output(target, verify=refuse) as tmp:
            tmp.write_bytes(b"data")
    assert list(tmp_path.iterdir()) == []


def test_an_os_error_that_names_no_file_is_raised_naming_the_output(tmp_path):
    import errno

    from flareseg.errors import os_error_message
    from flareseg.io import atomic_output

    target = tmp_path / "preview.png"
    with pytest.raises(OSError) as info:
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")  # as matplotlib's savefig raises it
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert os_error_message(info.value) == f"{target}: No space left on device"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# What is not a usable CT: refused with the file and the reason


def _series_copy(real_data, tmp_path, keep=lambda i, name: True):
    import shutil

    source = real_data / "totalsegmentator_dicom" / "dicom"
    files = sorted(p for p in source.rglob("*") if p.is_file())
    out = tmp_path / "series"
    out.mkdir()
    for i, f in enumerate(files):
        if keep(i, f.name):
            shutil.copy(f, out / f"{i:03d}.dcm")
    return out, files


def _slice_positions(folder):
    import pydicom

    return sorted(float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in folder.iterdir())


@pytest.mark.real
def test_a_series_with_a_missing_slice_is_refused_with_its_position(real_data, tmp_path):
    folder, _ = _series_copy(real_data, tmp_path)
    z = _slice_positions(folder)
    import pydicom

    for p in folder.iterdir():
        if float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) == z[10]:
            p.unlink()
    with pytest.raises(InputError, match=r"not uniform.*missing slice") as info:
        read_image(folder)
    assert "not part of the series" not in str(info.value)


@pytest.mark.real
def test_a_truncated_slice_is_named_where_the_gap_it_leaves_is_refused(real_data, tmp_path):
    folder, _ = _series_copy(real_data, tmp_path)
    z = _slice_positions(folder)
    import pydicom

    cut = next(p for p in sorted(folder.iterdir()) if float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) == z[10])
    cut.write_bytes(cut.read_bytes()[:2000])
    with pytest.raises(InputError, match=r"missing slice.*1 file\(s\) of the folder are not part of the series.*" + cut.name):
        read_image(folder)


@pytest.mark.real
def test_of_two_series_in_one_folder_the_larger_is_read_and_the_choice_is_logged(real_data, tmp_path, caplog):
    import pydicom

    folder, files = _series_copy(real_data, tmp_path)
    for i, f in enumerate(files[:3]):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3.4", f"1.2.3.4.{i}"
        ds.ImagePositionPatient = [0.0, 0.0, 500.0 + 2 * i]
        ds.save_as(folder / f"other{i}.dcm")
    with caplog.at_level("WARNING", logger="flareseg.io.read"):
        volume = read_image(folder)
    assert volume.shape[2] == len(files)
    assert f"reading the largest ({len(files)} slices" in caplog.text and "not the others (3 slices)" in caplog.text


@pytest.mark.real
def test_a_duplicated_slice_is_refused(real_data, tmp_path):
    import shutil

    folder, files = _series_copy(real_data, tmp_path)
    shutil.copy(folder / "005.dcm", folder / "005b.dcm")
    with pytest.raises(InputError, match="same position"):
        read_image(folder)


def pydicom_element(tag, vr, value):
    """A raw data element (to write a value its VR would refuse)."""
    from pydicom.dataelem import DataElement

    return DataElement(tag, vr, value)


def _edit_second_slice(edit):
    """An `edited_dicom_copy` edit applied to the series' second slice (instance number 2) only."""
    def apply(ds):
        if int(ds.InstanceNumber) == 2:
            edit(ds)
    return apply


@pytest.mark.real
@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda ds: setattr(ds, "PixelSpacing", [0.5, 0.5]), r"has pixel spacing \(0.5, 0.5\), the first slice .* \(0.810547, 0.810547\): not one volume"),
        (lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 1, 0, 0]), r"has orientation .*: not one volume"),
        (lambda ds: delattr(ds, "ImagePositionPatient"), r"1 of 3 slices have no image position"),
        (lambda ds: ds.__setitem__(0x00200032, pydicom_element(0x00200032, "LO", "left\\up\\high")), r"1.dcm has an unreadable image position \('left"),
    ],
)
def test_a_slice_of_another_geometry_is_refused_naming_it(real_data, tmp_path, edit, message):
    """The series reader takes the first slice's geometry for every slice: one that differs would be misplaced silently."""
    from conftest import edited_dicom_copy

    out = edited_dicom_copy(real_data, tmp_path / "series", _edit_second_slice(edit))
    with pytest.raises(InputError, match=message):
        read_image(out)


@pytest.mark.real
def test_an_mr_series_is_refused(real_data, tmp_path):
    from conftest import edited_dicom_copy

    out = edited_dicom_copy(real_data, tmp_path / "mr", lambda ds: setattr(ds, "Modality", "MR"))
    with pytest.raises(InputError, match="modality MR"):
        read_image(out)


def test_eight_bit_and_unrescaled_images_are_not_hounsfield_units(tmp_path):
    rng = np.random.default_rng(0)
    eight = write_volume(Volume(rng.integers(0, 256, (20, 20, 20)).astype(np.uint8), (1, 1, 1), (0, 0, 0), np.eye(3)), tmp_path / "eight.nii.gz")
    raw = write_volume(Volume(rng.integers(0, 3000, (20, 20, 20)).astype(np.int16), (1, 1, 1), (0, 0, 0), np.eye(3)), tmp_path / "raw.nii.gz")
    with pytest.raises(InputError, match="8-bit"):
        read_image(eight)
    with pytest.raises(InputError, match="not Hounsfield units"):
        read_image(raw)


def test_a_header_declaring_a_huge_volume_is_refused_before_reading(tmp_path):
    import resource

    import nibabel as nib

    small = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    small.header.set_data_shape((4000, 4000, 4000))
    path = tmp_path / "bomb.nii"
    with open(path, "wb") as fh:
        fh.write(small.header.binaryblock + b"\0" * 4 + b"\0" * 16)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match="voxels"):
        read_image(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB: nothing was allocated


@pytest.mark.parametrize(
    "content,words",
    [(b"\x89PNG\r\n\x1a\n\x00\xff", "binary"), (b"[1, 2]", "expected an object"), (b"{\"a\": NaN}", "NaN"), (b"{oops", "invalid JSON")],
)
def test_read_json_names_the_file_and_the_problem(tmp_path, content, words):
    from flareseg.io import read_json

    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=words) as info:
        read_json(path)
    assert str(path) in str(info.value)


def _mha(path, *, data: bytes | None = None, **fields):
    """A MetaImage file of a 40 x 36 x 30 int16 CT-like volume, with header `fields` replaced (e.g. DimSize="1 2 3")."""
    header = {
        "ObjectType": "Image", "NDims": "3", "BinaryData": "True", "BinaryDataByteOrderMSB": "False", "DimSize": "40 36 30",
        "ElementSpacing": "2 2 3", "Offset": "0 0 0", "TransformMatrix": "1 0 0 0 1 0 0 0 1", "ElementType": "MET_SHORT", **fields,
    }
    if data is None:
        data = np.linspace(-1000, 1000, 40 * 36 * 30).astype("<i2").tobytes()
    text = "".join(f"{key} = {value}\n" for key, value in header.items()) + "ElementDataFile = LOCAL\n"
    path.write_bytes(text.encode() + data)
    return path


def test_an_mha_header_declaring_a_huge_volume_is_refused_before_reading(tmp_path):
    """ITK's MetaImage reader allocates what the header declares: the header is checked first."""
    import resource

    path = _mha(tmp_path / "bomb.mha", DimSize="100000 100000 100000", data=b"\0" * 64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match=r"bomb.mha: the header declares \(100000, 100000, 100000\) = .* voxels, more than"):
        read_image(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB: nothing was allocated


def _nifti_with_sform(path, sform):
    """A small CT-like NIfTI whose geometry is `sform` alone (qform code 0, sform code 1), stored as given."""
    import nibabel as nib
    import struct

    image = nib.Nifti1Image(np.linspace(-1000, 1000, 8 * 8 * 6).astype(np.int16).reshape(8, 8, 6), np.diag([2.0, 2.0, 3.0, 1.0]))
    raw = bytearray(image.to_bytes())
    raw[252:256] = struct.pack("<hh", 0, 1)
    raw[280:328] = np.asarray(sform, "<f4")[:3].tobytes()
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("make", [
    lambda p: _mha(p / "far_origin.mha", Offset="0 1e30 0"),
])
def test_an_origin_beyond_a_kilometre_is_refused(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(InputError, match=rf"{path.name}: the origin must be finite and within 1,000,000 mm"):
        read_image(path)


@pytest.mark.parametrize("sform", [
    [[2, 0, 0, np.nan], [0, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1]],  # a NaN origin had crashed the body crop with an IndexError
    [[np.nan, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1]],
])
def test_a_nifti_orientation_holding_nan_is_refused_before_itk_reads_it(tmp_path, capfd, sform):
    """ITK's matrix code printed a page of NaN matrices to stderr before the error line."""
    path = _nifti_with_sform(tmp_path / "nan_sform.nii", sform)
    with pytest.raises(InputError, match=r"nan_sform.nii: the header's orientation \(qform/sform\) holds NaN or infinity"):
        read_image(path)
    assert capfd.readouterr().err == ""


def test_a_sheared_direction_matrix_is_refused_in_every_format(tmp_path):
    """ITK refuses a sheared NIfTI itself; a MetaImage's TransformMatrix with a shear (determinant 1) was read as is."""
    path = _mha(tmp_path / "sheared.mha", TransformMatrix="1 0 0 0.5 1 0 0 0 1")
    with pytest.raises(InputError, match=r"sheared.mha: the direction matrix is not a rotation \(its axes must be perpendicular unit vectors\)"):
        read_image(path)


def test_a_negative_mha_spacing_is_an_axis_that_runs_the_other_way(tmp_path):
    """MetaImage allows a negative spacing; ITK reads it as |spacing| along the negated axis, and so does the header check."""
    flipped = read_image(_mha(tmp_path / "flipped.mha", ElementSpacing="2 -2 3"))
    plain = read_image(_mha(tmp_path / "plain.mha"))
    assert flipped.spacing == plain.spacing == (2.0, 2.0, 3.0)
    np.testing.assert_array_equal(flipped.direction, np.diag([1.0, -1.0, 1.0]))
    np.testing.assert_array_equal(flipped.array, plain.array)


def _patched_nifti(path, edits, array=None):
    """A small CT-like NIfTI-1 file with the raw header bytes `edits` [(offset, struct format, values)] written over."""
    import gzip
    import struct

    import nibabel as nib

    array = np.linspace(-1000, 1000, 8 * 8 * 6).astype(np.int16).reshape(8, 8, 6) if array is None else array
    raw = bytearray(nib.Nifti1Image(array, np.diag([2.0, 2.0, 3.0, 1.0])).to_bytes())
    for offset, fmt, values in edits:
        raw[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path


@pytest.mark.parametrize("make, message", [
    # dim[2] = 0: ITK reads the header as 8 x 1 x 6, nibabel as 8 x 0 x 6 (had ended in a reshape ValueError)
    (lambda p: _patched_nifti(p / "zerodim.nii.gz", [(44, "<h", (0,))]), r"zerodim.nii.gz: the volume is empty \(size \(8, 0, 6\)\)$"),
    (lambda p: _patched_nifti(p / "negdim.nii.gz", [(44, "<h", (-8,))]), r"negdim.nii.gz: the volume is empty \(size \(8, -8, 6\)\)$"),
    # a valid slope with a NaN intercept (had ended in nibabel's HeaderDataError, an internal error)
    (lambda p: _patched_nifti(p / "nan_inter.nii.gz", [(112, "<ff", (1.0, float("nan")))]), r"nan_inter.nii.gz: the header's intensity scaling is invalid: .*intercept nan"),
    # the header alone, no voxel data (nibabel's message spans two lines)
    (lambda p: p.joinpath("header_only.nii").write_bytes(_patched_nifti(p / "full.nii", []).read_bytes()[:352]) and p / "header_only.nii",
     r"header_only.nii: cannot read the voxel data \(truncated or corrupt file\?\): Expected 768 bytes, got 0 bytes .* - could the file be damaged\?$"),
])
def test_a_damaged_nifti_header_is_named_on_one_line(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InputError, match=message) as info:
        read_image(path)
    assert "\n" not in str(info.value) and str(info.value).count(path.name) == 1 + ("from " in str(info.value))


def test_an_unknown_nifti_datatype_is_named_before_itk_reads_it(tmp_path, capfd):
    """ITK's NIfTI library printed '** ERROR: nifti_convert_nhdr2nim: bad datatype' to stderr above the error line."""
    path = _patched_nifti(tmp_path / "dtype.nii.gz", [(70, "<h", (9999,))])
    with pytest.raises(InputError, match=r"dtype.nii.gz: unknown NIfTI datatype code 9999 in the header"):
        read_image(path)
    assert capfd.readouterr().err == ""


def test_a_nifti2_file_is_named_as_such(tmp_path):
    """SimpleITK does not read NIfTI-2: the file was called corrupt."""
    import nibabel as nib

    nib.save(nib.Nifti2Image(np.full((8, 8, 6), -1000, np.int16), np.eye(4)), tmp_path / "two.nii.gz")
    with pytest.raises(InputError, match=r"two.nii.gz: a NIfTI-2 file, which flareseg's reader \(ITK\) does not read; save it as NIfTI-1"):
        read_image(tmp_path / "two.nii.gz")


@pytest.mark.real
@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda ds: setattr(ds, "PixelSpacing", [0, 0]), r"has pixel spacing \(0.0, 0.0\); it must be two positive numbers"),
        (lambda ds: setattr(ds, "PixelSpacing", [-0.8, 0.8]), r"has pixel spacing \(-0.8, 0.8\); it must be two positive numbers"),
        (lambda ds: setattr(ds, "ImageOrientationPatient", [0, 0, 0, 0, 0, 0]), r"has image orientation \(0.0, .*\); it must be two perpendicular unit vectors"),
        (lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 1, 0, 0]), r"has image orientation \(1.0, 0.0, 0.0, 1.0, .*\); it must be two perpendicular"),
    ],
)
def test_a_series_with_impossible_slice_geometry_is_refused(real_data, tmp_path, edit, message):
    """GDCM read a zero or negative pixel spacing silently (a prediction at a made-up scale); a degenerate
    orientation was reported as two slices at one position."""
    from conftest import edited_dicom_copy

    out = edited_dicom_copy(real_data, tmp_path / "series", edit)
    with pytest.raises(InputError, match=rf"{out}: slice \d.dcm " + message):
        read_image(out)


@pytest.mark.real
@pytest.mark.parametrize("which", [0, 2])
def test_a_corrupt_first_or_last_slice_is_named_not_left_out(real_data, tmp_path, which):
    """GDCM leaves an unreadable slice out of the series; at either end of it no gap betrays it, and the volume
    was read one slice short without a word."""
    from conftest import edited_dicom_copy

    out = edited_dicom_copy(real_data, tmp_path / "series", lambda ds: None)
    victim = sorted(out.iterdir(), key=lambda p: float(__import__("pydicom").dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))[which]
    victim.write_bytes(victim.read_bytes()[:200_000])  # cut inside the pixel data
    with pytest.raises(InputError, match=rf"{out}: 1 DICOM image file\(s\) cannot be read \(truncated or corrupt\?\) .*: {victim.name}; restore or remove them"):
        read_image(out)


@pytest.mark.real
def test_dicom_files_without_pixels_beside_a_series_are_ignored_by_name(real_data, tmp_path, caplog):
    import pydicom
    from conftest import edited_dicom_copy

    out = edited_dicom_copy(real_data, tmp_path / "series", lambda ds: None)
    report = pydicom.dcmread(next(out.iterdir()))
    del report.PixelData
    report.Modality, report.SeriesInstanceUID, report.SOPInstanceUID = "SR", "1.2.3.4.5", "1.2.3.4.5.1"
    report.save_as(out / "dose_report.dcm")
    (out / "notes.txt").write_text("not DICOM")
    with caplog.at_level("WARNING", logger="flareseg.io.read"):
        volume = read_image(out)
    assert volume.shape[2] == 3
    assert "ignoring 1 DICOM file(s) that are in no image series (no pixel data, or unreadable): dose_report.dcm" in caplog.text


@pytest.mark.parametrize("spacing", ["0.0008 0.0008 0.002", "2 1e-30 3"])
def test_a_header_spacing_below_a_hundredth_of_a_millimetre_is_refused(tmp_path, spacing):
    """Spacing in metres (or a damaged header) had been read and segmented as a scan a few millimetres across."""
    path = _mha(tmp_path / "metres.mha", ElementSpacing=spacing)
    with pytest.raises(InputError, match=r"metres.mha: voxel spacing .* mm is below 0.01 mm along an axis; .* in mm \(not metres\)\?"):
        read_image(path)
