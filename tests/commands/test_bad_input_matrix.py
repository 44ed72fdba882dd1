"""Every command against every class of bad input and unlucky path, in one table.

Each row runs ``btd-jax CMD ...`` in this process and must end with the given exit status and exactly
one line on stderr (``btd-jax CMD: error: ...``) holding the expected text (the file or flag at
fault), no traceback, every file of the case (inputs and outputs that were there before) byte-
identical afterwards, and nothing new left behind. Classes: missing, empty, garbage, truncated,
pickled, wrong dtype / ndim / size, complex, NaN, non-UTF-8 CSV, missing columns, zero or negative
numbers, output = input, output inside an input folder, output where a file is, existing outputs of
every kind the command writes, a non-empty folder another program wrote, missing optional package.
The model is the shared tiny workdir, loaded once.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np
import pytest

from btd_jax import cli
from btd_jax.data.testsets import layout

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
from _dicom_files import write_ct_series  # noqa: E402

sys.path.pop(0)

S = 16  # the tiny model's patch side


def _save(path, arr, **kw):
    np.save(path, arr, **kw)


def _ok(r):
    _save(r / "ok.npy", np.random.default_rng(0).uniform(size=(4, S, S)).astype(np.float32))


def _npy_bytes(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _testset(root, image=None, csv_bytes=None):
    rng = np.random.default_rng(1)
    items = [dict(image=rng.normal(40.0, 20.0, (24, 24)).astype(np.float32), x=12, y=12, type=t,
                  methods=["CTGAN"] if t == "FM" else [], scanner=f"S{i % 2}")
             for i, t in enumerate(("FM", "TM", "FM", "TM"))]
    path = layout.write_testset(root, "CT", "injection", items)
    if image is not None:
        (path.parent / "images" / "img_00001.npy").write_bytes(image)
    if csv_bytes is not None:
        path.write_bytes(csv_bytes)


BUILD = {
    "ok.npy": _ok,
    "vol.npy": lambda r: _save(r / "vol.npy", np.random.default_rng(2).uniform(-700, 2000, (2, 32, 32)).astype(np.float32)),
    "empty.npy": lambda r: _save(r / "empty.npy", np.zeros((0, S, S), np.float32)),
    "garbage.npy": lambda r: (r / "garbage.npy").write_bytes(b"this is not a NumPy file at all"),
    "truncated.npy": lambda r: (_ok(r), (r / "truncated.npy").write_bytes((r / "ok.npy").read_bytes()[:200]),
                                os.remove(r / "ok.npy")),
    "pickled.npy": lambda r: _save(r / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True),
    "int.npy": lambda r: _save(r / "int.npy", np.zeros((4, S, S), np.uint8)),
    "bool.npy": lambda r: _save(r / "bool.npy", np.zeros((2, 32, 32), bool)),
    "ndim.npy": lambda r: _save(r / "ndim.npy", np.zeros((2, 2, 2, S, S), np.float32)),
    "complex.npy": lambda r: _save(r / "complex.npy", np.full((4, S, S), 0.5 + 0.5j, np.complex64)),
    "nan.npy": lambda r: _save(r / "nan.npy", np.where(np.eye(S, dtype=bool), np.nan, 0.5).astype(np.float32)[None]),
    "small.npy": lambda r: _save(r / "small.npy", np.full((4, 8, 8), 0.5, np.float32)),
    "set.npz": lambda r: np.savez(r / "set.npz", patches=np.random.default_rng(3).uniform(size=(8, S, S)).astype(
        np.float32), labels=np.array([0, 1] * 4)),
    "nolabels.npz": lambda r: np.savez(r / "nolabels.npz", patches=np.zeros((4, S, S), np.float32)),
    "complex.npz": lambda r: np.savez(r / "complex.npz", patches=np.zeros((4, S, S), np.complex64),
                                      labels=np.array([0, 1, 0, 1])),
    "garbage.npz": lambda r: (r / "garbage.npz").write_bytes(b"PK\x03\x04 truncated zip"),
    "notutf8.csv": lambda r: (r / "notutf8.csv").write_bytes(b"path,x,y,label,score\nf\xe9e.dcm,1,2,0,0.5\n"),
    "nocols.csv": lambda r: (r / "nocols.csv").write_text("path,x\nf.dcm,1\n"),
    "scores.csv": lambda r: (r / "scores.csv").write_text("label,score\n0,0.1\n1,0.9\n0,0.2\n1,0.8\n"),
    "emptyfile.csv": lambda r: (r / "emptyfile.csv").write_bytes(b""),
    "emptydir": lambda r: (r / "emptydir").mkdir(),
    "dicom": lambda r: write_ct_series(r / "dicom", [0, 1, 2]),
    "ts": lambda r: _testset(r / "ts"),
    "ts_garbage": lambda r: _testset(r / "ts_garbage", image=b"not a NumPy file"),
    "ts_complex": lambda r: _testset(r / "ts_complex", image=_npy_bytes(np.full((24, 24), 40 + 1j, np.complex64))),
    "ts_notutf8": lambda r: _testset(r / "ts_notutf8", csv_bytes=b"path,x,y,type\nimages/f\xe9.npy,1,1,TM\n"),
    "ts_nocols": lambda r: _testset(r / "ts_nocols", csv_bytes=b"path,x,type\nimages/img_00000.npy,1,TM\n"),
    "afile": lambda r: (r / "afile").write_text("a user's file"),
    "foreign": lambda r: ((r / "foreign").mkdir(), (r / "foreign" / "notes.txt").write_text("a user's notes")),
    "state.npz": lambda r: np.savez(r / "state.npz", w=np.zeros(3)),
    "ct_csv": lambda r: ((r / "ct_csv").mkdir(), (r / "ct_csv" / "train_csv.csv").write_bytes(
        b"unix_path,x,y\nP0/s\xe9.npy,1,2\nP0/s1.npy,1,2\n")),
    "ct_nocols": lambda r: ((r / "ct_nocols").mkdir(), (r / "ct_nocols" / "train_csv.csv").write_text(
        "unix_path,x\nP0/s0.npy,1\n")),
    "nifti": lambda r: ((r / "nifti").mkdir(), (r / "nifti" / "scan.nii.gz").write_bytes(b"not really")),
}


class Case(NamedTuple):
    cmd: str
    name: str
    argv: Tuple[str, ...]  # "{r}": the case folder, "{W}": the trained workdir
    want: str  # text the one error line must hold
    needs: Tuple[str, ...] = ()
    pre: Dict[str, str] = {}  # outputs already there: path -> content ("/" at the end: a folder)
    missing: Optional[str] = None  # an optional package made unimportable
    code: int = 2


def _c(cmd, name, argv, want, needs=(), pre=None, missing=None, code=2):
    return Case(cmd, name, tuple(argv.split()), want, tuple(needs), dict(pre or {}), missing, code)


SCORE = "score --workdir {W} --input {r}/ok.npy --out {r}/s.csv"
EVAL_NPZ = "evaluate --workdir {W} --dataset {r}/set.npz --attack injection --centers 8 --n_boot 2 --out {r}/ev"
LOC = "localize --workdir {W} --input {r}/vol.npy --center 8 --out {r}/loc"
SCREEN = "screen --workdir {W} --input {r}/vol.npy --out {r}/scr"
COMPARE = ("compare --dataset {r}/set.npz --train {r}/ok.npy --attack injection --methods ae --preset tiny "
           "--n_boot 2 --out {r}/cmp")
EXPORT = "export --workdir {W} --out {r}/exp"
TRAIN = "train --config tiny --data {r}/ok.npy --workdir {r}/run --val_fraction 0 --no_progress"
ATTACK = ("attack --method sdedit --attack injection --input {r}/vol.npy --model {W} --out {r}/atk --n 1 "
          "--steps 2 --resamplings 1")
NUMBER = "expected an integer >= 1, got"

CASES = [
    # ------------------------------------------------------------------ score
    _c("score", "missing", "score --workdir {W} --input {r}/nope.npy --out {r}/s.csv",
       "argument --input: {r}/nope.npy: no such file or folder"),
    _c("score", "empty", "score --workdir {W} --input {r}/empty.npy --out {r}/s.csv", "{r}/empty.npy: empty",
       ["empty.npy"]),
    _c("score", "garbage", "score --workdir {W} --input {r}/garbage.npy --out {r}/s.csv",
       "{r}/garbage.npy: cannot read array: not a NumPy file", ["garbage.npy"]),
    _c("score", "truncated", "score --workdir {W} --input {r}/truncated.npy --out {r}/s.csv",
       "{r}/truncated.npy: cannot read array", ["truncated.npy"]),
    _c("score", "pickled", "score --workdir {W} --input {r}/pickled.npy --out {r}/s.csv",
       "{r}/pickled.npy: cannot read array: it holds pickled Python objects", ["pickled.npy"]),
    _c("score", "dtype", "score --workdir {W} --input {r}/int.npy --out {r}/s.csv",
       "{r}/int.npy: expected floating patches in [0, 1], got dtype uint8", ["int.npy"]),
    _c("score", "ndim", "score --workdir {W} --input {r}/ndim.npy --out {r}/s.csv",
       "{r}/ndim.npy: expected patches of shape (N, H, W) or (N, H, W, C)", ["ndim.npy"]),
    _c("score", "complex", "score --workdir {W} --input {r}/complex.npy --out {r}/s.csv",
       "{r}/complex.npy: complex values (dtype complex64) are not image intensities", ["complex.npy"]),
    _c("score", "nan", "score --workdir {W} --input {r}/nan.npy --out {r}/s.csv", "{r}/nan.npy: contains NaN or inf",
       ["nan.npy"]),
    _c("score", "size", "score --workdir {W} --input {r}/small.npy --out {r}/s.csv",
       "{r}/small.npy: patches are 8x8 but the model (tiny) expects 16x16", ["small.npy"]),
    _c("score", "csv-not-utf8", "score --workdir {W} --input {r}/dicom --locations {r}/notutf8.csv --out {r}/s.csv",
       "{r}/notutf8.csv: not UTF-8 text", ["dicom", "notutf8.csv"]),
    _c("score", "csv-columns", "score --workdir {W} --input {r}/dicom --locations {r}/nocols.csv --out {r}/s.csv",
       "{r}/nocols.csv: missing column(s) ['y']", ["dicom", "nocols.csv"]),
    _c("score", "empty-folder", "score --workdir {W} --input {r}/emptydir --out {r}/s.csv", "{r}/emptydir",
       ["emptydir"]),
    _c("score", "batch-0", SCORE + " --batch_size 0", "argument --batch_size: " + NUMBER + " '0'", ["ok.npy"]),
    _c("score", "steps-neg", SCORE + " --reverse_steps -1", "argument --reverse_steps: " + NUMBER + " '-1'",
       ["ok.npy"]),
    _c("score", "png_max-neg", SCORE + " --png_max -1", "argument --png_max: expected an integer >= 0, got '-1'",
       ["ok.npy"]),
    _c("score", "n_per_slice-0", SCORE + " --n_per_slice 0", "argument --n_per_slice: " + NUMBER + " '0'", ["ok.npy"]),
    _c("score", "out=input", "score --workdir {W} --input {r}/ok.npy --out {r}/ok.npy --overwrite",
       "{r}/ok.npy: refusing to write the output there: it is the input {r}/ok.npy", ["ok.npy"]),
    _c("score", "maps=input", "score --workdir {W} --input {r}/set.npz --out {r}/s.csv --maps {r}/set --overwrite",
       "{r}/set.npz: refusing to write the output there: it is the input", ["set.npz"]),
    _c("score", "out-inside-input", "score --workdir {W} --input {r}/dicom --out {r}/dicom/s.csv",
       "{r}/dicom/s.csv: refusing to write the output there: it is inside the input folder {r}/dicom", ["dicom"]),
    _c("score", "png-inside-input", "score --workdir {W} --input {r}/dicom --out {r}/s.csv --png {r}/dicom/png",
       "{r}/dicom/png: refusing to write outputs there: it is inside the input folder", ["dicom"]),
    _c("score", "out-under-a-file", "score --workdir {W} --input {r}/ok.npy --out {r}/afile/s.csv",
       "{r}/afile: exists and is not a folder, so {r}/afile/s.csv cannot be written", ["ok.npy", "afile"]),
    _c("score", "out-is-a-folder", "score --workdir {W} --input {r}/ok.npy --out {r}/emptydir --overwrite",
       "{r}/emptydir: is a folder; give a file name for this output", ["ok.npy", "emptydir"]),
    _c("score", "exists-csv", SCORE, "{r}/s.csv: already exists; pass --overwrite", ["ok.npy"], {"s.csv": "keep"}),
    _c("score", "exists-skipped", SCORE, "{r}/s.skipped.csv: already exists", ["ok.npy"], {"s.skipped.csv": "keep"}),
    _c("score", "exists-maps", SCORE + " --maps {r}/m", "{r}/m.npz: already exists", ["ok.npy"], {"m.npz": "keep"}),
    _c("score", "exists-reference", SCORE + " --fit_reference {r}/ref.json", "{r}/ref.json: already exists",
       ["ok.npy"], {"ref.json": "keep"}),
    _c("score", "exists-png", SCORE + " --png {r}/png", "{r}/png/0.png: already exists from an earlier run",
       ["ok.npy"], {"png/0.png": "keep"}),
    _c("score", "workdir-file", "score --workdir {W} --input {r}/ok.npy --out {W}/config.json --overwrite",
       "refusing to write the output there: it is config.json of the workdir", ["ok.npy"]),
    # ------------------------------------------------------------------ evaluate
    _c("evaluate", "missing", "evaluate --workdir {W} --dataset {r}/nope --attack injection --out {r}/ev",
       "argument --dataset: {r}/nope: no such file or folder"),
    _c("evaluate", "garbage-npz", "evaluate --workdir {W} --dataset {r}/garbage.npz --attack injection --out {r}/ev",
       "{r}/garbage.npz: cannot read array", ["garbage.npz"]),
    _c("evaluate", "npz-columns", "evaluate --workdir {W} --dataset {r}/nolabels.npz --attack injection --out {r}/ev",
       "{r}/nolabels.npz: a .npz test set needs 'patches' and 'labels' arrays", ["nolabels.npz"]),
    _c("evaluate", "complex", "evaluate --workdir {W} --dataset {r}/complex.npz --attack injection --out {r}/ev",
       "{r}/complex.npz (patches): complex values (dtype complex64)", ["complex.npz"]),
    _c("evaluate", "garbage-image", "evaluate --workdir {W} --dataset {r}/ts_garbage --attack injection --out {r}/ev",
       "img_00001.npy: cannot read array: not a NumPy file", ["ts_garbage"]),
    _c("evaluate", "complex-image", "evaluate --workdir {W} --dataset {r}/ts_complex --attack injection --out {r}/ev",
       "img_00001.npy: complex values (dtype complex64)", ["ts_complex"]),
    _c("evaluate", "csv-not-utf8", "evaluate --workdir {W} --dataset {r}/ts_notutf8 --attack injection --out {r}/ev",
       "{r}/ts_notutf8/CT/Inject/CT_Inject.csv: not UTF-8 text", ["ts_notutf8"]),
    _c("evaluate", "csv-columns", "evaluate --workdir {W} --dataset {r}/ts_nocols --attack injection --out {r}/ev",
       "{r}/ts_nocols/CT/Inject/CT_Inject.csv: missing column(s) ['y']", ["ts_nocols"]),
    _c("evaluate", "scores-not-utf8", "evaluate --scores {r}/notutf8.csv --attack injection --out {r}/ev",
       "{r}/notutf8.csv: not UTF-8 text", ["notutf8.csv"]),
    _c("evaluate", "scores-columns", "evaluate --scores {r}/nocols.csv --attack injection --out {r}/ev",
       "{r}/nocols.csv: no 'label' column", ["nocols.csv"]),
    _c("evaluate", "scores-empty", "evaluate --scores {r}/emptyfile.csv --attack injection --out {r}/ev",
       "{r}/emptyfile.csv: no 'label' column (columns: none)", ["emptyfile.csv"]),
    _c("evaluate", "n_boot-0", EVAL_NPZ + " --n_boot 0", "argument --n_boot/--n-boot: " + NUMBER + " '0'", ["set.npz"]),
    _c("evaluate", "centers-0", EVAL_NPZ + " --centers 0", "argument --centers: " + NUMBER + " '0'", ["set.npz"]),
    _c("evaluate", "batch-0", EVAL_NPZ + " --batch_size 0", "argument --batch_size/--batch-size: " + NUMBER + " '0'",
       ["set.npz"]),
    _c("evaluate", "fpr-1", EVAL_NPZ + " --target_fpr 1", "expected a fraction in (0, 1), got '1'", ["set.npz"]),
    _c("evaluate", "out=input", "evaluate --workdir {W} --dataset {r}/ts --attack injection --out {r}/ts --overwrite",
       "{r}/ts: refusing to write outputs there: it is the input {r}/ts", ["ts"]),
    _c("evaluate", "out-inside-input", "evaluate --workdir {W} --dataset {r}/ts --attack injection --out {r}/ts/ev",
       "{r}/ts/ev: refusing to write outputs there: it is inside the input folder {r}/ts", ["ts"]),
    _c("evaluate", "out-is-a-file", "evaluate --scores {r}/scores.csv --attack injection --out {r}/afile",
       "{r}/afile: exists and is not a folder; give a folder", ["scores.csv", "afile"]),
    _c("evaluate", "out-name-too-long", "evaluate --scores {r}/scores.csv --attack injection --out {r}/" + "x" * 300,
       "File name too long", ["scores.csv"]),
    _c("evaluate", "foreign-folder", "evaluate --scores {r}/scores.csv --attack injection --out {r}/foreign",
       "{r}/foreign: folder exists and holds files that btd-jax evaluate did not write (notes.txt)",
       ["scores.csv", "foreign"]),
] + [
    _c("evaluate", f"exists-{name}", EVAL_NPZ, f"{{r}}/ev/{name}: already exists", ["set.npz"],
       {f"ev/{name}": "keep", "ev/.btd-jax-output": "evaluate\n"})
    for name in ("results.md", "results.csv", "results.json", "scores.csv", "skipped.csv", "roc_CT.png",
                 "hist_CT_full.png")
] + [
    _c("evaluate", "exists-calibration", "evaluate --workdir {r}/wd --dataset {r}/set.npz --attack injection "
       "--calibrate {r}/ok.npy --out {r}/ev", "{r}/wd/calibration.json: already exists", ["set.npz", "ok.npy"],
       {"wd/calibration.json": "keep"}),
    # ------------------------------------------------------------------ localize
    _c("localize", "missing", "localize --workdir {W} --input {r}/nope.npy --out {r}/loc",
       "argument --input: {r}/nope.npy: no such file or folder"),
    _c("localize", "empty", "localize --workdir {W} --input {r}/empty.npy --center 8 --out {r}/loc",
       "{r}/empty.npy: empty array", ["empty.npy"]),
    _c("localize", "garbage", "localize --workdir {W} --input {r}/garbage.npy --center 8 --out {r}/loc",
       "{r}/garbage.npy: cannot read array", ["garbage.npy"]),
    _c("localize", "truncated", "localize --workdir {W} --input {r}/truncated.npy --center 8 --out {r}/loc",
       "{r}/truncated.npy: cannot read array", ["truncated.npy"]),
    _c("localize", "pickled", "localize --workdir {W} --input {r}/pickled.npy --center 8 --out {r}/loc",
       "{r}/pickled.npy: cannot read array: it holds pickled", ["pickled.npy"]),
    _c("localize", "dtype", "localize --workdir {W} --input {r}/bool.npy --center 8 --out {r}/loc",
       "{r}/bool.npy: expected real numeric values, got dtype bool", ["bool.npy"]),
    _c("localize", "ndim", "localize --workdir {W} --input {r}/ndim.npy --center 8 --out {r}/loc",
       "{r}/ndim.npy: expected a slice (H, W) or a volume (S, H, W)", ["ndim.npy"]),
    _c("localize", "complex", "localize --workdir {W} --input {r}/complex.npy --center 8 --out {r}/loc",
       "{r}/complex.npy: complex values (dtype complex64)", ["complex.npy"]),
    _c("localize", "nan", "localize --workdir {W} --input {r}/nan.npy --center 8 --out {r}/loc",
       "{r}/nan.npy: 16 NaN or inf value(s)", ["nan.npy"]),
    _c("localize", "stride-0", LOC + " --stride 0", "argument --stride: " + NUMBER + " '0'", ["vol.npy"]),
    _c("localize", "top_k-neg", LOC + " --top_k -2", "argument --top_k/--top-k: " + NUMBER + " '-2'", ["vol.npy"]),
    _c("localize", "center-neg", LOC + " --center -1", "expected an integer >= 0, got '-1'", ["vol.npy"]),
    _c("localize", "out=input", "localize --workdir {W} --input {r}/dicom --center 8 --out {r}/dicom --overwrite",
       "{r}/dicom: refusing to write outputs there: it is the input {r}/dicom", ["dicom"]),
    _c("localize", "out-inside-input", "localize --workdir {W} --input {r}/dicom --center 8 --out {r}/dicom/loc",
       "it is inside the input folder {r}/dicom", ["dicom"]),
    _c("localize", "out-is-a-file", "localize --workdir {W} --input {r}/vol.npy --center 8 --out {r}/afile",
       "{r}/afile: exists and is not a folder", ["vol.npy", "afile"]),
    _c("localize", "foreign-folder", "localize --workdir {W} --input {r}/vol.npy --center 8 --out {r}/foreign",
       "{r}/foreign: folder exists and holds files that btd-jax localize did not write", ["vol.npy", "foreign"]),
] + [
    _c("localize", f"exists-{name}", LOC, f"{{r}}/loc/{name}: already exists", ["vol.npy"],
       {f"loc/{name}": "keep", "loc/.btd-jax-output": "localize\n"})
    for name in ("suspicion.npy", "overlay.png", "localize.json", "skipped.csv")
] + [
    # ------------------------------------------------------------------ screen
    _c("screen", "missing", "screen --workdir {W} --input {r}/nope --out {r}/scr",
       "argument --input: {r}/nope: no such file or folder"),
    _c("screen", "garbage", "screen --workdir {W} --input {r}/garbage.npy --out {r}/scr",
       "{r}/garbage.npy: cannot read array", ["garbage.npy"]),
    _c("screen", "pickled", "screen --workdir {W} --input {r}/pickled.npy --out {r}/scr",
       "{r}/pickled.npy: cannot read array: it holds pickled", ["pickled.npy"]),
    _c("screen", "complex", "screen --workdir {W} --input {r}/complex.npy --out {r}/scr",
       "{r}/complex.npy: complex values (dtype complex64)", ["complex.npy"]),
    _c("screen", "nan", "screen --workdir {W} --input {r}/nan.npy --out {r}/scr", "{r}/nan.npy: 16 NaN or inf",
       ["nan.npy"]),
    _c("screen", "ndim", "screen --workdir {W} --input {r}/ndim.npy --out {r}/scr",
       "{r}/ndim.npy: expected a slice (H, W) or a volume (S, H, W)", ["ndim.npy"]),
    _c("screen", "empty-folder", "screen --workdir {W} --input {r}/emptydir --out {r}/scr", "{r}/emptydir",
       ["emptydir"]),
    _c("screen", "top_k-0", SCREEN + " --top_k 0", "argument --top_k: " + NUMBER + " '0'", ["vol.npy"]),
    _c("screen", "tissue-2", SCREEN + " --tissue_min 2", "argument --tissue_min: expected a fraction in [0, 1]",
       ["vol.npy"]),
    _c("screen", "fpr-0", SCREEN + " --calibrate --target_fpr 0", "expected a fraction in (0, 1), got '0'",
       ["vol.npy"]),
    _c("screen", "out=series", "screen --workdir {W} --input {r}/dicom --out {r}/dicom --overwrite",
       "{r}/dicom: refusing to write outputs there: it is the input {r}/dicom", ["dicom"]),
    _c("screen", "out-inside-series", "screen --workdir {W} --input {r}/dicom --out {r}/dicom/scr",
       "it is inside the input folder {r}/dicom", ["dicom"]),
    _c("screen", "out-is-a-file", "screen --workdir {W} --input {r}/vol.npy --out {r}/afile",
       "{r}/afile: exists and is not a folder", ["vol.npy", "afile"]),
    _c("screen", "foreign-folder", "screen --workdir {W} --input {r}/vol.npy --out {r}/foreign",
       "{r}/foreign: folder exists and holds files that btd-jax screen did not write", ["vol.npy", "foreign"]),
    _c("screen", "exists-calibration", "screen --workdir {W} --input {r}/vol.npy --calibrate --calibration {r}/c.json",
       "{r}/c.json: already exists", ["vol.npy"], {"c.json": "keep"}),
    _c("screen", "missing-calibration", SCREEN + " --calibration {r}/nope.json",
       "{r}/nope.json: no such calibration file", ["vol.npy"]),
] + [
    _c("screen", f"exists-{name}", SCREEN, f"{{r}}/scr/{name}", ["vol.npy"],
       {f"scr/{name}": "keep", "scr/.btd-jax-output": "screen\n"})
    for name in ("findings.json", "findings.csv", "suspicion.npy", "suspicion.nii.gz", "skipped.csv",
                 "dicom/suspicion_pm.dcm", "overlays/slice_0000.png", "dicom/sc/sc_0000.dcm")
] + [
    # ------------------------------------------------------------------ compare
    _c("compare", "missing-train", "compare --dataset {r}/set.npz --train {r}/nope.npy --attack injection --out {r}/c",
       "argument --train: {r}/nope.npy: no such file or folder", ["set.npz"]),
    _c("compare", "train-garbage", COMPARE.replace("ok.npy", "garbage.npy"), "{r}/garbage.npy: cannot read array",
       ["set.npz", "garbage.npy"]),
    _c("compare", "train-complex", COMPARE.replace("ok.npy", "complex.npy"), "{r}/complex.npy: complex values",
       ["set.npz", "complex.npy"]),
    _c("compare", "train-nan", COMPARE.replace("ok.npy", "nan.npy"), "{r}/nan.npy: contains NaN or inf",
       ["set.npz", "nan.npy"]),
    _c("compare", "dataset-columns", COMPARE.replace("set.npz", "nolabels.npz"),
       "{r}/nolabels.npz: a .npz test set needs 'patches' and 'labels'", ["nolabels.npz", "ok.npy"]),
    _c("compare", "n_boot-0", COMPARE + " --n_boot 0", NUMBER + " '0'", ["set.npz", "ok.npy"]),
    _c("compare", "max_train-0", COMPARE + " --max_train 0", NUMBER + " '0'", ["set.npz", "ok.npy"]),
    _c("compare", "size-neg", COMPARE + " --size -16", NUMBER + " '-16'", ["set.npz", "ok.npy"]),
    _c("compare", "out=input", COMPARE.replace("{r}/cmp", "{r}/set.npz"),
       "{r}/set.npz: refusing to write outputs there: it is the input",
       ["set.npz", "ok.npy"]),
    _c("compare", "result=input", COMPARE.replace("--out {r}/cmp", "--out {r} --overwrite").replace(
        "{r}/set.npz", "{r}/results.md"), "{r}/results.md: refusing to write the output there: it is the input",
       ["ok.npy"], {"results.md": "a user's file"}),
] + [
    _c("compare", f"exists-{name}", COMPARE, f"{{r}}/cmp/{name}: already exists", ["set.npz", "ok.npy"],
       {f"cmp/{name}": "keep", "cmp/.btd-jax-output": "compare\n"})
    for name in ("results.md", "results.csv", "results.json", "scores.csv", "comparison.png", "skipped.csv",
                 "baselines/ae.npz")
] + [
    # ------------------------------------------------------------------ export
    _c("export", "no-flatbuffers", EXPORT, "btd-jax export needs the optional package 'flatbuffers', which is not "
       "installed: pip install 'btd_jax[export]'", missing="flatbuffers"),
    _c("export", "platform", EXPORT + " --platforms cpu,foo", "argument --platforms: expected comma-separated values "
       "from cpu, cuda, rocm, tpu, got 'cpu,foo'"),
    _c("export", "center-neg", EXPORT + " --center -1", "expected an integer >= 0, got '-1'"),
    _c("export", "out-is-a-file", "export --workdir {W} --out {r}/afile", "{r}/afile: exists and is not a folder",
       ["afile"]),
    _c("export", "out=workdir", "export --workdir {W} --out {W}/checkpoints --overwrite",
       "refusing to write outputs there: it is checkpoints of the workdir"),
    _c("export", "foreign-folder", "export --workdir {W} --out {r}/foreign",
       "{r}/foreign: folder exists and holds files that btd-jax export did not write", ["foreign"]),
] + [
    _c("export", f"exists-{name}", EXPORT.replace("{W}", "{r}/wd"), f"{{r}}/exp/{name}: already exists", [],
       {f"exp/{name}": "keep", "exp/.btd-jax-output": "export\n", "wd/calibration.json": "{}"})
    for name in ("scorer.jaxexport", "scorer.json", "calibration.json")  # the workdir's calibration is copied
] + [
    # ------------------------------------------------------------------ prepare
    _c("prepare", "missing", "prepare --input {r}/nope --out {r}/st", "argument --input: {r}/nope: no such file"),
    _c("prepare", "csv-not-utf8", "prepare --input {r}/ct_csv --out {r}/st --no_progress",
       "{r}/ct_csv/train_csv.csv: not UTF-8 text", ["ct_csv"]),
    _c("prepare", "csv-columns", "prepare --input {r}/ct_nocols --out {r}/st --no_progress",
       "{r}/ct_nocols/train_csv.csv: missing column(s) ['y']", ["ct_nocols"]),
    _c("prepare", "size-0", "prepare --input {r}/dicom --out {r}/st --size 0", "argument --size: " + NUMBER + " '0'",
       ["dicom"]),
    _c("prepare", "size-neg", "prepare --input {r}/dicom --out {r}/st --size -1", NUMBER + " '-1'", ["dicom"]),
    _c("prepare", "shard_rows-0", "prepare --input {r}/dicom --out {r}/st --shard_rows 0",
       "argument --shard_rows: " + NUMBER + " '0'", ["dicom"]),
    _c("prepare", "out=input", "prepare --input {r}/dicom --out {r}/dicom --overwrite",
       "{r}/dicom: refusing to write outputs there: it is the input", ["dicom"]),
    _c("prepare", "out-inside-input", "prepare --input {r}/dicom --out {r}/dicom/st",
       "it is inside the input folder {r}/dicom", ["dicom"]),
    _c("prepare", "out-is-a-file", "prepare --input {r}/dicom --out {r}/afile", "{r}/afile: exists and is not a folder",
       ["dicom", "afile"]),
    _c("prepare", "foreign-folder", "prepare --input {r}/dicom --out {r}/foreign",
       "{r}/foreign: folder exists and holds files that btd-jax prepare did not write", ["dicom", "foreign"]),
    _c("prepare", "no-nibabel", "prepare --input {r}/nifti --format nifti --modality CT --out {r}/st --no_progress",
       "reading NIfTI needs the optional package 'nibabel', which is not installed: pip install 'btd_jax[nifti]'",
       ["nifti"], missing="nibabel"),
    # ------------------------------------------------------------------ train
    _c("train", "missing", "train --config tiny --data {r}/nope.npy --workdir {r}/run",
       "argument --data: {r}/nope.npy: no such file or folder"),
    _c("train", "empty", TRAIN.replace("ok.npy", "empty.npy"), "{r}/empty.npy: empty", ["empty.npy"]),
    _c("train", "garbage", TRAIN.replace("ok.npy", "garbage.npy"), "{r}/garbage.npy: cannot read array",
       ["garbage.npy"]),
    _c("train", "truncated", TRAIN.replace("ok.npy", "truncated.npy"), "{r}/truncated.npy: cannot read array",
       ["truncated.npy"]),
    _c("train", "pickled", TRAIN.replace("ok.npy", "pickled.npy"), "{r}/pickled.npy: cannot read array: it holds "
       "pickled", ["pickled.npy"]),
    _c("train", "dtype", TRAIN.replace("ok.npy", "int.npy"), "{r}/int.npy: expected floating patches", ["int.npy"]),
    _c("train", "complex", TRAIN.replace("ok.npy", "complex.npy"), "{r}/complex.npy: complex values",
       ["complex.npy"]),
    _c("train", "size", TRAIN.replace("ok.npy", "small.npy"), "{r}/small.npy: patches are 8x8 but config 'tiny' "
       "expects 16x16", ["small.npy"]),
    _c("train", "num_steps-0", TRAIN + " --num_steps 0", "argument --num_steps/--num-steps: " + NUMBER + " '0'",
       ["ok.npy"]),
    _c("train", "stop_at-neg", TRAIN + " --stop_at -1", "argument --stop_at/--stop-at: " + NUMBER + " '-1'",
       ["ok.npy"]),
    _c("train", "workers-neg", TRAIN + " --workers -1", "argument --workers: expected an integer >= 0, got '-1'",
       ["ok.npy"]),
    _c("train", "batch-0", TRAIN + " --batch_size 0", NUMBER + " '0'", ["ok.npy"]),
    _c("train", "lr-0", TRAIN + " --lr 0", "argument --lr: expected a number > 0, got '0'", ["ok.npy"]),
    _c("train", "val-1", TRAIN + " --val_fraction 1", "expected a fraction in [0, 1), got '1'", ["ok.npy"]),
    _c("train", "set-steps-0", TRAIN + " --set train.num_steps=0", "train.num_steps must be >= 1 to train, got 0",
       ["ok.npy"]),
    _c("train", "set-invalid", TRAIN + " --set train.checkpoint_every=0", "train.checkpoint_every must be >= 1, got 0",
       ["ok.npy"]),
    _c("train", "workdir-inside-data", "train --config tiny --data {r}/dicom --workdir {r}/dicom/run",
       "{r}/dicom/run: refusing to write outputs there: it is inside the input folder {r}/dicom", ["dicom"]),
    _c("train", "workdir-is-a-file", TRAIN.replace("{r}/run", "{r}/afile"), "{r}/afile: exists and is not a folder",
       ["ok.npy", "afile"]),
    _c("train", "workdir-foreign", TRAIN.replace("{r}/run", "{r}/foreign"),
       "{r}/foreign: folder exists and holds files that btd-jax train did not write", ["ok.npy", "foreign"]),
    # ------------------------------------------------------------------ convert
    _c("convert", "missing", "convert --torch {r}/nope.pt --config tiny --workdir {r}/cv",
       "argument --torch: {r}/nope.pt: no such file"),
    _c("convert", "garbage", "convert --torch {r}/garbage.npz --config tiny --workdir {r}/cv",
       "{r}/garbage.npz: cannot read array", ["garbage.npz"]),
    _c("convert", "no-torch", "convert --torch {r}/afile --config tiny --workdir {r}/cv",
       "reading a PyTorch checkpoint needs torch (pip install 'btd_jax[torch]')", ["afile"], missing="torch"),
    _c("convert", "image_size-0", "convert --torch {r}/state.npz --config tiny --workdir {r}/cv --image_size 0",
       NUMBER + " '0'", ["state.npz"]),
    _c("convert", "workdir-is-the-input", "convert --torch {r}/state.npz --config tiny --workdir {r}/state.npz",
       "{r}/state.npz: refusing to write outputs there: it is the input", ["state.npz"]),
    _c("convert", "workdir-foreign", "convert --torch {r}/state.npz --config tiny --workdir {r}/foreign",
       "{r}/foreign: folder exists and holds files that btd-jax convert did not write", ["state.npz", "foreign"]),
    # ------------------------------------------------------------------ attack
    _c("attack", "n-0", ATTACK + " --n 0", "argument --n: " + NUMBER + " '0'", ["vol.npy"]),
    _c("attack", "attacker_steps-neg", ATTACK + " --attacker_steps -1", "argument --attacker_steps: " + NUMBER,
       ["vol.npy"]),
    _c("attack", "strength-0", ATTACK + " --strength 0", "expected a fraction in (0, 1], got '0'", ["vol.npy"]),
    _c("attack", "batch-0", ATTACK + " --batch_size 0", NUMBER + " '0'", ["vol.npy"]),
    _c("attack", "garbage", ATTACK.replace("vol.npy", "garbage.npy"), "{r}/garbage.npy: cannot read array",
       ["garbage.npy"]),
    _c("attack", "complex", ATTACK.replace("vol.npy", "complex.npy"), "{r}/complex.npy: complex values",
       ["complex.npy"]),
    _c("attack", "nan", ATTACK.replace("vol.npy", "nan.npy"), "{r}/nan.npy: 16 NaN or inf", ["nan.npy"]),
    _c("attack", "out-inside-input", ATTACK.replace("--input {r}/vol.npy", "--input {r}/dicom").replace(
        "{r}/atk", "{r}/dicom/atk"), "it is inside the input folder {r}/dicom", ["dicom"]),
    _c("attack", "out=model", ATTACK.replace("{r}/atk", "{W}") + " --overwrite",
       "refusing to write outputs there: it is the workdir", ["vol.npy"]),
    _c("attack", "out-is-a-file", ATTACK.replace("{r}/atk", "{r}/afile"), "{r}/afile: exists and is not a folder",
       ["vol.npy", "afile"]),
    _c("attack", "exists-images", ATTACK, "{r}/atk/CT/Inject/images/SDEdit_fake_x.npy: already exists",
       ["vol.npy"], {"atk/CT/Inject/images/SDEdit_fake_x.npy": "keep"}),
    _c("attack", "exists-rows", ATTACK, "{r}/atk/CT/Inject/CT_Inject.csv: already holds SDEdit-CT-Inject rows; pass "
       "--overwrite to replace them", ["vol.npy"], {"atk/CT/Inject/CT_Inject.csv": "path,x,y,type,SDEdit-CT-Inject\n"
                                                   "images/a.npy,1,1,FM,1\n"}),
    _c("attack", "exists-skipped", ATTACK, "{r}/atk/CT/Inject/SDEdit-CT-Inject.skipped.csv: already exists",
       ["vol.npy"], {"atk/CT/Inject/SDEdit-CT-Inject.skipped.csv": "keep"}),
    # ------------------------------------------------------------------ bench, demo
    _c("bench", "batch-0", "bench --config tiny --batch_size 0", "argument --batch_size: " + NUMBER + " '0'"),
    _c("bench", "batches-0", "bench --config tiny --batches 1,0", "expected comma-separated integers >= 1"),
    _c("bench", "min_time-neg", "bench --config tiny --min_time -1", "expected a number >= 0, got '-1'"),
    _c("bench", "exists", "bench --config tiny --out {r}/b.json", "{r}/b.json: already exists", [], {"b.json": "k"}),
    _c("bench", "out-under-a-file", "bench --config tiny --out {r}/afile/b.json", "{r}/afile: exists and is not a "
       "folder", ["afile"]),
    _c("demo", "minutes-0", "demo --minutes 0", "argument --minutes: expected a number > 0, got '0'"),
    _c("demo", "steps-neg", "demo --num_steps -5", NUMBER + " '-5'"),
    _c("demo", "out-is-a-file", "demo --quick --out {r}/afile", "{r}/afile: exists and is not a directory", ["afile"]),
]


def _snapshot(*roots) -> Dict[str, str]:
    out = {}
    for root in roots:
        for base, dirs, files in os.walk(root):
            for d in dirs:
                out[os.path.join(base, d) + "/"] = ""
            for n in files:
                p = os.path.join(base, n)
                with open(p, "rb") as f:
                    out[p] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.mark.parametrize("case", CASES, ids=[f"{c.cmd}-{c.name}" for c in CASES])
def test_bad_input(case, tmp_path, tiny_workdir, capsys, monkeypatch, load_tiny_once):
    r = tmp_path / "case"
    r.mkdir()
    for name in case.needs:
        BUILD[name](r)
    for rel, text in case.pre.items():
        (r / rel).parent.mkdir(parents=True, exist_ok=True)
        (r / rel).write_text(text)
    if case.missing:
        monkeypatch.setitem(sys.modules, case.missing, None)  # `import` now fails as if not installed
    fmt = dict(r=str(r), W=str(tiny_workdir))
    before = _snapshot(r, tiny_workdir)
    with pytest.raises(SystemExit) as e:
        cli.main(["btd-jax", *[a.format(**fmt) for a in case.argv]])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert e.value.code == case.code, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"btd-jax {case.cmd}: error: "), err
    assert case.want.format(**fmt) in lines[0], err
    assert _snapshot(r, tiny_workdir) == before  # inputs untouched, nothing left behind


def test_the_matrix_covers_every_command():
    covered = {c.cmd for c in CASES}
    assert covered == set(cli.COMMANDS), set(cli.COMMANDS) - covered
