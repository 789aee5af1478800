"""Calibrated weight algorithms: values chosen with the layer's calibration inputs, written
into the formats' own layouts (``gptq``: GPTQ; ``grids``: the formats' 4-bit grids;
``calibrated``: Hessians from calibration data, GPTQ results cached per layer).

May import: ``edgeq.algorithms``, ``edgeq.errors``, ``edgeq.schemes``, ``edgeq.models`` and
``edgeq.planning.sensitivity`` (where the cache lives, beside the sensitivity cache). Used by
``edgeq.planning`` (candidates' sensitivity), ``edgeq.llm`` and the backends (lowering)."""
