import subprocess
import sys

import pytest

from btd_jax import cli


def test_every_command_is_registered():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert tuple(sub.choices) == cli.COMMANDS


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "btd_jax.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for name in cli.COMMANDS:
        assert name in out.stdout


def test_bad_input_is_one_line_and_status_2(tmp_path):
    missing = tmp_path / "nope.npy"
    out = subprocess.run([sys.executable, "-m", "btd_jax.cli", "train", "--config", "tiny", "--data", str(missing),
                          "--workdir", str(tmp_path / "w")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = [l for l in out.stderr.strip().splitlines() if l.strip()]
    assert lines[-1].startswith("btd-jax train: error:") and "nope.npy" in lines[-1]
    assert "Traceback" not in out.stderr


def test_unknown_command_is_refused():
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["frobnicate"])
    assert e.value.code == 2


def _files(tmp_path, *names):
    for n in names:
        (tmp_path / n).write_bytes(b"")
    return [str(tmp_path / n) for n in names]


def test_compare_steps_is_a_deprecated_alias_of_reverse_steps(capsys, tmp_path):
    d, t = _files(tmp_path, "d.npz", "t.npy")
    base = ["compare", "--dataset", d, "--train", t, "--out", "o", "--attack", "injection"]
    assert cli.build_parser().parse_args(base).reverse_steps == 1
    assert cli.build_parser().parse_args(base + ["--reverse_steps", "4"]).reverse_steps == 4
    assert cli.build_parser().parse_args(base + ["--steps", "3"]).reverse_steps == 3
    assert "--steps is deprecated, use --reverse_steps" in capsys.readouterr().err


@pytest.mark.parametrize("argv, dest, new", [
    (["demo"], "num_steps", "--num_steps"),
    (["screen", "--workdir", ".", "--input", "."], "reverse_steps", "--reverse_steps"),
])
def test_steps_alias_names_what_it_counts(argv, dest, new, capsys):
    assert getattr(cli.build_parser().parse_args(argv + [new, "4"]), dest) == 4
    assert getattr(cli.build_parser().parse_args(argv + ["--steps", "3"]), dest) == 3
    assert f"--steps is deprecated, use {new}" in capsys.readouterr().err


def test_a_run_imports_only_its_command(tmp_path):
    (a,) = _files(tmp_path, "a.npz")
    code = ("import sys; from btd_jax import cli; p = cli.build_parser(only='convert'); "
            "print(sorted(m for m in sys.modules if m.startswith('btd_jax.commands.') and not m.startswith("
            "'btd_jax.commands._'))); "
            f"print(p.parse_args(['convert', '--torch', {a!r}, '--workdir', 'w']).command)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["['btd_jax.commands.convert']", "convert"]
