"""Decoder LLMs: export with a KV cache, generate, measure perplexity.

What this package owns: the ``LMSession`` contract every format's LLM artifact is run
through (``session.py``), generation and sampling, perplexity, and the LM-specific parts
of export (the artifact's tokenizer, chat template and generation config). What each
format does to build and open an LLM artifact lives in its backend
(``edgeq.backends.<format>.llm``); this package never names a format.

May import: ``edgeq.errors``, ``edgeq.backends`` (registry only), ``edgeq.models``.
"""
