"""Targets and device profiles: built-ins validate, user files extend, errors point at lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeq.errors import ConfigError
from edgeq.targets import builtin_names, load_profile, load_target, validate_file


def test_every_builtin_target_and_profile_validates():
    targets = builtin_names("targets")
    assert {"snapdragon8", "snapdragon8-gpu", "apple", "rpi5", "rpi4", "x86"} <= set(targets)
    for name in targets:
        resolved = load_target(name)
        assert resolved.profile.name == resolved.target.device
    profiles = builtin_names("profiles")
    assert len(profiles) >= 8
    families = {load_profile(p).family for p in profiles}
    assert families == {"snapdragon", "apple", "raspberry-pi", "x86"}


def test_every_profile_number_has_a_source_comment():
    from edgeq.targets import builtin_dir

    for path in builtin_dir("profiles").glob("*.yaml"):
        text = path.read_text()
        for key in ("peak_gops", "bandwidth_gbps", "ram_gb", "app_share"):
            assert key in text
        assert text.count("source") + text.count("estimate") + text.count("derived") >= 8, path


def test_user_target_extends_builtin_and_overrides(tmp_path: Path):
    f = tmp_path / "tight.yaml"
    f.write_text("extends: snapdragon8\nbudgets:\n  runtime_memory_mb: 64\n")
    t = load_target(str(f)).target
    assert t.name == "tight"
    assert t.budgets.runtime_memory_mb == 64
    assert t.budgets.storage_mb == load_target("snapdragon8").target.budgets.storage_mb
    assert t.delegates == ["qnn", "xnnpack"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("extends: snapdragon8\nbudgets:\n  runtime_memry_mb: 64\n", "3: unknown key 'budgets.runtime_memry_mb'; did you mean 'runtime_memory_mb'?"),
        ("extends: snapdragon8\ndelegates: [qnn, xnnpak]\n", "did you mean 'xnnpack'?"),
        ("extends: snapdragn8\n", "unknown target 'snapdragn8'; did you mean 'snapdragon8'?"),
        ("extends: snapdragon8\nbudgets: {runtime_memory_mb: lots}\n", "budgets.runtime_memory_mb"),
        ("extends: snapdragon8\ndevice: pixel9\n", "unknown device profile 'pixel9'"),
        ("extends: snapdragon8\nbudgets: [1, 2\n", "YAML syntax error"),
        ("extends: snapdragon8\ndefault_precision: int4\nprecisions: [int8]\n", "default_precision 'int4' is not in precisions"),
        ("- just\n- a list\n", "expected a mapping"),
        ("name: x\ndevice: rpi5\nformat: executorch\ndelegates: [cpu]\nprecisions: [int8]\ndefault_precision: int8\nbudgets: {runtime_memory_mb: 1, storage_mb: 1}\n", "unknown executorch delegate 'cpu'"),
    ],
)
def test_bad_target_files_name_the_problem(tmp_path: Path, text: str, expected: str):
    f = tmp_path / "t.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_target(str(f))
    assert expected in info.value.one_line()
    assert "\n" not in info.value.one_line()


def test_yaml_syntax_error_has_line_number(tmp_path: Path):
    f = tmp_path / "t.yaml"
    f.write_text("extends: snapdragon8\nbudgets:\n  storage_mb: 3\n   runtime_memory_mb: [\n")
    with pytest.raises(ConfigError, match=r"t.yaml:4:\d+: YAML syntax error"):
        load_target(str(f))


def test_validate_file_tells_profiles_from_targets(tmp_path: Path):
    from edgeq.targets import builtin_dir

    profile = validate_file(builtin_dir("profiles") / "rpi5.yaml")
    assert profile.cpu.cores == 4
    bad = tmp_path / "p.yaml"
    bad.write_text((builtin_dir("profiles") / "rpi5.yaml").read_text().replace("bandwidth_gbps", "bandwith_gbps"))
    with pytest.raises(ConfigError, match="did you mean 'bandwidth_gbps'"):
        validate_file(bad)


def test_unknown_builtin_target_suggests():
    with pytest.raises(ConfigError, match="did you mean 'rpi5'"):
        load_target("rpi6")
