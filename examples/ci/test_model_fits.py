"""A pytest file for your repository's CI: the exported model must fit its device.

Run from the edgeq repository (it exports edgeq's tiny test model; point ``MODEL`` and
``TARGET`` at yours)::

    HF_HUB_OFFLINE=1 python -m pytest -q examples/ci/test_model_fits.py

or with an artifact you already exported::

    EDGEQ_ARTIFACT=dist/my-model-rpi5 EDGEQ_MODEL=./my-model python -m pytest -q examples/ci/test_model_fits.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeq.testing import assert_fits

MODEL = os.environ.get("EDGEQ_MODEL", "tests.tiny_models:tiny_text")
TARGET = os.environ.get("EDGEQ_TARGET", "rpi5")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    if os.environ.get("EDGEQ_ARTIFACT"):
        return Path(os.environ["EDGEQ_ARTIFACT"])
    from edgeq.export import export

    return export(MODEL, TARGET, output=tmp_path_factory.mktemp("dist") / "model").artifact_dir


def test_model_fits_its_target(artifact):
    # Every gate must pass; fidelity is re-measured against MODEL, so it may not be skipped.
    assert_fits(artifact, TARGET, model=MODEL, allow_skipped=True)
    result = assert_fits(artifact, TARGET, model=MODEL)
    assert result.gate("fidelity").status == "pass"


def test_a_too_small_phone_is_caught(artifact, tmp_path):
    # The same artifact against a device with 10 KB of storage: assert_fits says why it fails.
    small = tmp_path / "tiny-phone.yaml"
    small.write_text(f"extends: {TARGET}\nbudgets:\n  storage_mb: 0.01\n")
    with pytest.raises(AssertionError, match=r"fit fail: file .* > 10.00 KB storage budget"):
        assert_fits(artifact, small, model=MODEL)
