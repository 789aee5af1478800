"""Calibrated weight algorithms: values chosen with the layer's calibration inputs, written
into the formats' own layouts (``gptq``: GPTQ; ``grids``: the formats' 4-bit grids;
``calibrated``: Hessians from calibration data, GPTQ results cached per layer)."""
