"""Calibrated weight algorithms: values chosen for a layer (with its calibration inputs, or
from the weight alone), written into the formats' own layouts (``gptq``: GPTQ; ``hqq``:
HQQ-style scale / zero-point search, no data; ``awq``: AWQ's searched input scale and where
it folds; ``grids``: the formats' 4-bit grids; ``calibrated``: Hessians from calibration
data, results per layer, cached).

May import: ``edgeq.algorithms``, ``edgeq.errors``, ``edgeq.schemes``, ``edgeq.models`` and
``edgeq.planning.sensitivity`` (where the cache lives, beside the sensitivity cache). Used by
``edgeq.planning`` (candidates' sensitivity), ``edgeq.llm`` and the backends (lowering)."""
