"""Bundling verified artifacts into apps: ``edgeq bundle``.

This subpackage owns what an app reads about a model: ``edgeq_bundle.json`` (schema v1,
described in :mod:`edgeq.bundle.describe`), the golden input and expected output an app
checks its own runtime against (:mod:`edgeq.bundle.golden`), the on-disk layout of an
Android app's ``assets/edgeq/<id>/`` plus ``assets/edgeq/index.json``
(:mod:`edgeq.bundle.write`), and building the native ExecuTorch runner that checks and
benchmarks a bundle on this machine (:mod:`edgeq.bundle.native`).

>>> from edgeq.bundle import bundle
>>> result = bundle("dist/all-MiniLM-L6-v2-rpi5", "android-demo")  # doctest: +SKIP
>>> result.bundle_dir.name, result.description["golden"]["tolerance"]["max_abs"]  # doctest: +SKIP
"""

from edgeq.bundle.write import BundleResult, bundle, read_index

__all__ = ["BundleResult", "bundle", "read_index"]
