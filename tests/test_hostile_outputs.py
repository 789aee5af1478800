"""Outputs and --force: edgeq replaces only what it wrote, never the user's files or the
input, never leaves half-written output, reports a full disk in one line, and writes files
other users can read."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli_here, run_cli
from tests.hostile import assert_clean_failure, assert_tree_unchanged, tree_state

MLP = "tests.tiny_models:tiny_mlp"


def _user_dir(t: Path) -> Path:
    d = t / "photos"
    d.mkdir()
    (d / "holiday.jpg").write_bytes(b"\xff\xd8precious")
    return d


def _model_dir(t: Path) -> Path:
    d = t / "my-model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def _nested_output_of_model(t: Path) -> tuple[Path, Path]:
    return _model_dir(t), t


# (id, argv builder returning (argv, cwd or None, env or None), expected text)
CASES = [
    ("force-over-user-folder", lambda t: (["export", MLP, "-t", "x86", "-o", str(_user_dir(t)), "--force"], None, None),
     "is not an edgeq artifact"),
    ("force-over-input-model", lambda t: (["export", str(_model_dir(t)), "-t", "x86", "-o", str(t / "my-model"), "--force"], None, None),
     "is or contains the input model"),
    ("force-over-parent-of-input-model", lambda t: (["export", str(_model_dir(t)), "-t", "x86", "-o", str(t), "--force"], None, None),
     ("is or contains the input model", "current directory")),
    ("force-over-dot", lambda t: (["export", MLP, "-t", "x86", "-o", ".", "--force"], t, None), "the current directory"),
    ("force-over-dotdot", lambda t: (["export", MLP, "-t", "x86", "-o", "..", "--force"], _user_dir(t), None), "the current directory"),
    ("force-over-home", lambda t: (["export", MLP, "-t", "x86", "-o", str(t / "home"), "--force"], None, {"HOME": str(_home(t))}),
     "the home directory"),
    ("force-over-root", lambda t: (["export", MLP, "-t", "x86", "-o", "/", "--force"], None, None), "root directory"),
    ("output-is-a-file", lambda t: (["export", MLP, "-t", "x86", "-o", str(_file(t)), "--force"], None, None), "not a directory"),
    ("output-symlink", lambda t: (["export", MLP, "-t", "x86", "-o", str(_link(t)), "--force"], None, None), "symbolic link"),
    ("output-exists-no-force", lambda t: (["export", MLP, "-t", "x86", "-o", str(_user_dir(t))], None, None), "already exists"),
    ("output-unwritable", lambda t: (["export", MLP, "-t", "x86", "-o", "/proc/edgeq-out"], None, None), ("cannot write", "cannot create")),
    ("plan-output-is-dir", lambda t: (["plan", MLP, "-t", "x86", "-o", str(_user_dir(t))], None, None), "is a directory"),
    ("plan-output-exists", lambda t: (["plan", MLP, "-t", "x86", "-o", str(_file(t))], None, None), "already exists"),
    ("plan-force-over-other-file", lambda t: (["plan", MLP, "-t", "x86", "-o", str(_file(t)), "--force"], None, None),
     "is not a plan edgeq wrote"),
    ("html-over-user-file", lambda t: (["profile", "nowhere", "--html", str(_file(t))], None, None),
     "is not an edgeq profile report"),
]


def _home(t: Path) -> Path:
    h = t / "home"
    h.mkdir()
    (h / ".bashrc").write_text("# mine")
    return h


def _file(t: Path) -> Path:
    f = t / "notes.txt"
    f.write_text("mine")
    return f


def _link(t: Path) -> Path:
    target = _user_dir(t)
    link = t / "link"
    link.symlink_to(target)
    return link


@pytest.mark.parametrize("case_id, build, expected", CASES, ids=[c[0] for c in CASES])
def test_outputs_refused(tmp_path: Path, case_id: str, build, expected):
    work = tmp_path / "work"
    work.mkdir()
    argv, cwd, env = build(work)
    before = tree_state(work)
    proc = cli_here(*argv, cwd=cwd, env=env)
    assert_clean_failure(proc, expected)
    assert_tree_unchanged(work, before)


def test_force_replaces_an_edgeq_artifact_and_keeps_a_readable_mode(tmp_path: Path):
    out = tmp_path / "out"
    first = run_cli("export", MLP, "-t", "x86", "-o", str(out), "-q")
    assert first.returncode == 0, first.stderr
    second = run_cli("export", MLP, "-t", "x86", "-o", str(out), "-q", "--force")
    assert second.returncode == 0, second.stderr
    mode = stat.S_IMODE(out.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o777 & ~umask, oct(mode)  # not mkdtemp's 0700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask for p in out.iterdir()), [
        (p.name, oct(p.stat().st_mode)) for p in out.iterdir()]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# rpi5 (two ExecuTorch lowerings, ~40 s) runs with the slow tests; x86 checks the same writer.
@pytest.mark.parametrize("target", ["x86", pytest.param("rpi5", marks=pytest.mark.slow)])
def test_exports_are_byte_identical(tmp_path: Path, target: str):
    files = []
    for name in ("a", "b"):
        proc = run_cli("export", "tests.tiny_models:tiny_text", "-t", target, "-o", str(tmp_path / name), "-q")
        assert proc.returncode == 0, proc.stderr
        model = next(p for p in (tmp_path / name).iterdir() if p.name.startswith("model."))
        files.append(model.read_bytes())
    assert files[0] == files[1]


@pytest.fixture()
def small_tmpfs(tmp_path: Path):
    """A 2 MiB tmpfs (root only): a disk that fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill a disk needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_disk_full_during_export(small_tmpfs: Path):
    # tiny_text's artifact is ~100 KB: fill the disk to leave less than that
    (small_tmpfs / "filler").write_bytes(b"\0" * (2 * 2**20 - 40 * 1024))
    proc = run_cli("export", "tests.tiny_models:tiny_text", "-t", "x86", "-o", str(small_tmpfs / "out"))
    assert_clean_failure(proc, "no space left on device")
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]


def test_disk_full_writing_a_plan(small_tmpfs: Path, tmp_path: Path):
    (small_tmpfs / "filler").write_bytes(b"\0" * (2 * 2**20))
    env = {"EDGEQ_CACHE_DIR": str(tmp_path / "cache")}
    proc = run_cli("plan", MLP, "-t", "x86", "-o", str(small_tmpfs / "plan.yaml"), env=env)
    assert_clean_failure(proc, "no space left on device")
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]
