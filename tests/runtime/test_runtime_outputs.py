"""The output plan (inputs, links, workdirs, existing outputs, file/folder clashes, failure cleanup),
atomic writes, the one-line error dictionary and the closed-loop noise filter."""

import errno
import os
import sys
import types
import zipfile

import numpy as np
import pytest

from btd_jax.data.errors import DataError
from btd_jax.runtime import MARKER, MissingExtra, NonFiniteError, OutputPlan, WorkdirBusy, describe, discard_active
from btd_jax.runtime import atomic, background, skipped_path, write_skipped


def _touch(path, text="x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def _plan(*, files=(), folders=(), patterns=(), **kw):
    plan = OutputPlan("score", **kw)
    for f in files:
        plan.file(str(f))
    for f in folders:
        plan.folder(str(f))
    for folder, glob in patterns:
        plan.pattern(str(folder), glob)
    return plan


@pytest.fixture(autouse=True)
def _no_active_plans():
    yield
    discard_active(failed=False)


def test_an_input_is_never_an_output_through_links_or_spellings(tmp_path):
    src = _touch(tmp_path / "in.npy")
    link, hard = tmp_path / "link.npy", tmp_path / "hard.npy"
    os.symlink(src, link)
    os.link(src, hard)
    for out in (src, str(link), os.path.relpath(src)):
        with pytest.raises(DataError, match="refusing to write the output there: it is the input"):
            _plan(files=[out], overwrite=True, inputs=[src]).check()
    with pytest.raises(DataError, match="refusing to write the output there: it is the input"):  # same inode
        _plan(files=[hard], overwrite=True, inputs=[src]).check()
    folder = tmp_path / "dicoms"
    _touch(folder / "a.dcm")
    other = tmp_path / "other"
    other.mkdir()
    os.link(folder / "a.dcm", other / "b.dcm")
    with pytest.raises(DataError, match=r"b\.dcm: refusing to write the output there: it is a hard link to .*a\.dcm"):
        _plan(files=[other / "b.dcm"], overwrite=True, inputs=[str(folder)]).check()
    alias = tmp_path / "alias"
    os.symlink(folder, alias)
    for out in (folder / "a.dcm", folder / "new.csv", alias / "sub" / "x.png"):  # new files too
        with pytest.raises(DataError, match="it is inside the input folder"):
            _plan(files=[out], overwrite=True, inputs=[str(folder)]).check()
    for out in (folder, folder / "eval", alias):
        with pytest.raises(DataError, match="refusing to write outputs there: it is (the input|inside the input folder)"):
            _plan(folders=[out], overwrite=True, inputs=[str(folder)]).check()
    assert sorted(os.listdir(folder)) == ["a.dcm"]
    _plan(files=[tmp_path / "beside.csv"], inputs=[src, str(folder)]).check()  # beside the inputs: fine


def test_workdir_entries_are_protected(tmp_path):
    wd = tmp_path / "wd"
    cfg = _touch(wd / "config.json", "{}")
    for out in (cfg, wd / "checkpoints" / "10" / "x", wd / "metrics.jsonl", wd):
        with pytest.raises(DataError, match=r"refusing to write (the output|outputs) there: it is .*workdir"):
            _plan(files=[out], overwrite=True, workdirs=[str(wd)]).check()
    assert open(cfg).read() == "{}"
    _plan(files=[wd / "calibration.json"], workdirs=[str(wd)]).check()  # beside them: fine


def test_existing_outputs_need_overwrite(tmp_path):
    out = _touch(tmp_path / "scores.csv")
    with pytest.raises(DataError, match=r"scores.csv: already exists; pass --overwrite to replace it"):
        _plan(files=[out]).check()
    _plan(files=[out], overwrite=True).check()
    figs = tmp_path / "eval"
    _touch(figs / "roc_CTGAN.png")
    _touch(figs / "notes.txt")
    with pytest.raises(DataError, match=r"roc_CTGAN.png: already exists from an earlier run; pass --overwrite"):
        _plan(patterns=[(figs, "roc_*.png")]).check()
    _plan(patterns=[(figs, "hist_*.png")]).check()  # other files in a pattern's folder are left alone
    with pytest.raises(DataError, match=r"eval: folder exists and holds files that btd-jax score did not write "
                                        r"\(notes.txt, roc_CTGAN.png\); give a new or empty folder, or pass"):
        _plan(folders=[figs]).check()
    _plan(folders=[figs], overwrite=True).check()  # now marked as score's
    assert open(figs / MARKER).read() == "score\n"
    _plan(folders=[figs]).check()  # a folder score wrote before: its files are still checked one by one
    with pytest.raises(DataError, match="folder exists and holds files that btd-jax evaluate did not write"):
        _evaluate_plan(figs).check()  # another command's folder is foreign
    resumed = tmp_path / "store"
    _touch(resumed / "plan.json", "{}")
    plan = OutputPlan("prepare")
    plan.folder(str(resumed), resume=("plan.json",))
    plan.check()


def _evaluate_plan(folder):
    plan = OutputPlan("evaluate")
    plan.folder(str(folder))
    return plan


def test_a_file_where_a_folder_is_wanted_and_the_reverse(tmp_path):
    f = _touch(tmp_path / "afile")
    with pytest.raises(DataError, match=r"afile: exists and is not a folder, so .*afile/s.csv cannot be written"):
        _plan(files=[tmp_path / "afile" / "s.csv"], overwrite=True).check()
    with pytest.raises(DataError, match=r"afile: exists and is not a folder; give a folder for this output"):
        _plan(folders=[f], overwrite=True).check()
    with pytest.raises(DataError, match=r"afile: exists and is not a folder, so"):
        _plan(patterns=[(tmp_path / "afile" / "overlays", "*.png")], overwrite=True).check()
    with pytest.raises(DataError, match=r"is a folder; give a file name for this output"):
        _plan(files=[tmp_path], overwrite=True).check()


def test_a_failed_run_removes_only_what_it_added(tmp_path):
    out = tmp_path / "run"
    old = _touch(out / "results.md", "old")
    _touch(out / MARKER, "score\n")
    _plan(folders=[out, out / "new"], files=[out / "results.md", out / "scores.csv", out / "new" / "a.csv"],
          patterns=[(out / "figs", "*.png")], overwrite=True).check()
    for name in ("scores.csv", "new/a.csv", "figs/roc.png"):
        _touch(out / name)
    _touch(out / "results.md", "new")
    discard_active()  # what the command line does when the command fails
    assert open(old).read() == "new"  # replaced with --overwrite: it existed before, so it stays
    assert sorted(os.listdir(out)) == [MARKER, "results.md"]  # new files and the folders made for them: gone
    fresh = tmp_path / "fresh" / "deep"
    _plan(folders=[fresh], files=[fresh / "x.csv"]).check()
    _touch(fresh / "x.csv")
    discard_active()
    assert not (tmp_path / "fresh").exists()


def test_atomic_writes_are_whole_or_absent(tmp_path):
    path = tmp_path / "scores.csv"
    atomic.write_text(path, "good\n")
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(path) as f:
            f.write("half")
            raise RuntimeError("crash while writing")
    assert path.read_text() == "good\n" and os.listdir(tmp_path) == ["scores.csv"]
    assert atomic.numpy_name("maps", ".npz") == "maps.npz" and atomic.numpy_name("m.npz", ".npz") == "m.npz"
    atomic.save_npz(tmp_path / "maps", maps=np.ones(3))  # exactly the name given: the caller decides
    atomic.save_npy(tmp_path / "s.npy", np.arange(4))
    assert np.load(tmp_path / "maps")["maps"].tolist() == [1, 1, 1] and np.load(tmp_path / "s.npy").tolist() == [0, 1, 2, 3]
    with atomic.atomic_path(tmp_path / "v.nii.gz") as tmp:
        assert tmp.endswith("v.nii.gz") and os.path.basename(tmp).startswith(atomic.TMP_PREFIX)
        open(tmp, "w").write("x")
    assert (tmp_path / "v.nii.gz").read_text() == "x"


class _Skip:
    def __init__(self, item, reason):
        self.item, self.reason = item, reason


def test_write_skipped(tmp_path):
    out = str(tmp_path / "scores.csv")
    assert skipped_path(out) == str(tmp_path / "scores.skipped.csv")
    assert skipped_path(str(tmp_path / "evaldir")) == str(tmp_path / "evaldir.skipped.csv")
    assert write_skipped(skipped_path(out), []) is None and not os.path.exists(skipped_path(out))
    path = write_skipped(skipped_path(out), [_Skip("a.dcm", "not a DICOM file"), ("b.dcm", "no pixel data, x")])
    assert path == skipped_path(out)
    assert open(path).read().splitlines() == ["item,reason", "a.dcm,not a DICOM file", 'b.dcm,"no pixel data, x"']


def test_every_known_error_is_one_line_with_a_status():
    try:
        b"ab\xffcd".decode("utf-8")
    except UnicodeDecodeError as e:
        unicode_error = e
    try:
        raise ImportError("Please install 'flatbuffers'") from ModuleNotFoundError("no", name="flatbuffers")
    except ImportError as e:
        chained = e
    cases = [
        (DataError("x.npy: bad\nshape"), (2, "x.npy: bad shape")),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "a.csv"), (2, "a.csv: No such file or directory")),
        (PermissionError(errno.EACCES, "Permission denied", "out/s.csv"), (2, "out/s.csv: Permission denied")),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "out"), (2, "out: Is a directory")),
        (KeyError("unknown preset 'foo'"), (2, "unknown preset 'foo'")),
        (zipfile.BadZipFile("File is not a zip file"), (2, "File is not a zip file")),
        (MissingExtra("nibabel", "writing NIfTI"),
         (2, "writing NIfTI needs the optional package 'nibabel', which is not installed: "
             "pip install 'btd_jax[nifti]'")),
        (chained, (2, "the optional package 'flatbuffers' is not installed: pip install 'btd_jax[export]'")),
        (NonFiniteError("diverged"), (1, "diverged")),
        (WorkdirBusy("busy"), (1, "busy")),
    ]
    for e, want in cases:
        assert describe(e) == want, e
    status, line = describe(unicode_error)
    assert status == 2 and "not UTF-8" in line
    assert describe(RuntimeError("a bug")) is None and describe(TypeError("a bug")) is None


def test_closed_loop_reports_are_dropped_and_others_passed_on(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
    background.drop_closed_loop_reports()
    background.drop_closed_loop_reports()  # once only
    for text in ("Event loop is closed", "something else"):
        sys.unraisablehook(types.SimpleNamespace(exc_value=RuntimeError(text)))
    assert seen == ["something else"]
