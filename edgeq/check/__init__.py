"""``edgeq check``: a CI gate that turns an artifact's manifest and fresh measurements
into pass / fail / skipped verdicts.

Modules: ``results`` (typed ``CheckResult`` / ``GateResult``), ``manifest_view`` (the one
place the manifest is read), ``limits`` (each limit and its source), ``gates`` (integrity,
fit, fidelity, delegation, latency), ``latency_rule`` (the noise-aware regression rule),
``baseline`` (baseline files and the regression gate), ``run`` (``check_artifacts``),
``render`` (table, JUnit, GitHub annotations and summary).

>>> from edgeq.check import check_artifacts
>>> results = check_artifacts(["dist/tiny-rpi5"], target="rpi5")  # doctest: +SKIP
>>> results[0].passed  # doctest: +SKIP
True
"""

from edgeq.check.results import CheckResult, GateResult, exit_code, to_json
from edgeq.check.run import CheckOptions, check_artifacts

__all__ = ["CheckOptions", "CheckResult", "GateResult", "check_artifacts", "exit_code", "to_json"]
