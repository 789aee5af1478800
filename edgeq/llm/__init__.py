"""Decoder LLMs: export with a KV cache, generate, measure perplexity.

What this package owns: the ``LMSession`` contract every format's LLM artifact is run
through (``session.py``), generation and sampling, perplexity, and the LM-specific parts
of export (the artifact's tokenizer, chat template and generation config). What each
format does to build and open an LLM artifact lives in its backend
(``edgeq.backends.<format>.llm``); this package never names a format.

May import: ``edgeq.errors``, ``edgeq.schemes``, ``edgeq.artifact`` / ``edgeq.manifest`` (writing and
reading LLM artifacts), ``edgeq.backends`` (registry only), ``edgeq.models``, ``edgeq.planning``
(plan files), ``edgeq.numerics`` / ``edgeq.jsonio``, ``edgeq.export`` (its result type and version
table), ``edgeq.profiling.emulate`` (the device's CPU share for the decode estimate),
``edgeq.profiling.runner`` (the resident-set measurement the encoder runner makes) and
``edgeq.progress`` (steps shown while planning) and ``edgeq.algorithms`` (GPTQ for a plan's
calibrated layers).
"""
