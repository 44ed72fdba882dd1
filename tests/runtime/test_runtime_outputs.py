"""Output guards: no overwriting of inputs, workdir files or existing outputs without --overwrite."""

import os

import pytest

from btd_jax.data.errors import DataError
from btd_jax.runtime import check_output, check_output_dir, skipped_path, write_skipped


def _touch(path, text="x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_input_never_overwritten_even_through_links(tmp_path):
    src = _touch(tmp_path / "in.npy")
    link = tmp_path / "link.npy"
    os.symlink(src, link)
    hard = tmp_path / "hard.npy"
    os.link(src, hard)
    for out in (src, str(link), str(hard), os.path.relpath(src)):
        with pytest.raises(DataError, match="refusing to write the output there: it is the input"):
            check_output(out, overwrite=True, inputs=[src])
    folder = tmp_path / "dicoms"
    member = _touch(folder / "a.dcm")
    with pytest.raises(DataError, match="file of the input folder"):
        check_output(member, overwrite=True, inputs=[str(folder)])
    assert check_output(str(folder / "new.csv"), inputs=[str(folder)]) == str(folder / "new.csv")


def test_workdir_files_protected(tmp_path):
    wd = tmp_path / "wd"
    cfg = _touch(wd / "config.json", "{}")
    for out in (cfg, str(wd / "checkpoints" / "10" / "x"), str(wd / "metrics.jsonl"), str(wd)):
        with pytest.raises(DataError, match=r"refusing to write the output there: it is .*workdir"):
            check_output(out, overwrite=True, workdirs=[str(wd)])
    assert open(cfg).read() == "{}"
    check_output(str(wd / "scores.csv"), workdirs=[str(wd)])  # a new file beside them is fine


def test_existing_output_needs_overwrite(tmp_path):
    out = _touch(tmp_path / "scores.csv")
    with pytest.raises(DataError, match=r"scores.csv: already exists; pass --overwrite to replace it"):
        check_output(out)
    assert check_output(out, overwrite=True) == out
    with pytest.raises(DataError, match="is a directory"):
        check_output(str(tmp_path), overwrite=True)


def test_output_dir(tmp_path):
    src = tmp_path / "testset"
    _touch(src / "labels.csv")
    with pytest.raises(DataError, match="inside\\) the input"):
        check_output_dir(str(src / "eval"), inputs=[str(src)])
    out = tmp_path / "eval"
    check_output_dir(str(out))  # missing: fine
    _touch(out / "metrics.json")
    with pytest.raises(DataError, match="not empty; pass --overwrite"):
        check_output_dir(str(out))
    with pytest.raises(DataError, match="metrics.json: already exists"):
        check_output_dir(str(out), names=["metrics.json", "roc.png"])
    check_output_dir(str(out), names=["roc.png"])
    check_output_dir(str(out), names=["metrics.json"], overwrite=True)
    with pytest.raises(DataError, match="workdir"):
        check_output_dir(str(tmp_path / "wd" / "checkpoints"), workdirs=[str(tmp_path / "wd")])


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
