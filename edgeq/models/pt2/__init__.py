"""Saved ExportedPrograms (``.pt2``): load them without running anything they carry.

A ``.pt2`` is untrusted input, and ``torch.export.load`` is not safe on one: it unpickles
(weights and constants flagged ``use_pickle``, torchbind and opaque constants, a
``weights_only=False`` fallback for example inputs), evaluates symbolic-shape strings with
``sympy.sympify`` (``eval``), ``exec``s guard code from the file when ``program.module()`` is
called, and sets FX node names from the file that end up in generated Python source. Its C++
zip reader also looks names up case-insensitively, so what a scan sees need not be what it reads.

This subpackage owns loading such a file without handing it to torch's loader or zip reader,
and turning the loaded program back into layers edgeq can quantize. ``safe_load``
(:mod:`edgeq.models.pt2.load`) runs these steps:

1. :mod:`edgeq.models.pt2.archive` reads the archive with :mod:`zipfile` under fixed bounds (file
   size, entry count, declared and actual decompressed sizes, compression ratio); encrypted,
   symlink, directory and oddly named entries are refused, and names are compared after
   normalisation (NFC, case-fold, ``\\`` → ``/``) so no two entries can be confused; the
   entries must be exactly those ``torch.export.save`` writes for one plain program;
2. :mod:`edgeq.models.pt2.tensors` builds every weight and constant from raw bytes with
   ``torch.frombuffer`` (the configs must say so: no ``use_pickle``, no custom or opaque
   objects); the example inputs, the one pickle in a plain archive, are opcode-scanned (tensor
   rebuild globals only), re-zipped under canonical names and read with ``weights_only=True``;
3. :mod:`edgeq.models.pt2.program` checks the program JSON (depth; aten targets, in subgraphs too;
   identifiers wherever FX writes names into generated source; symbolic expressions; no guard
   code; inputs are tensors or plain constants), and after deserialization the graphs torch built;
4. :mod:`edgeq.models.pt2.guard` is the window in which torch's serde deserializes the program from
   those tensors: every unpickling entry point raises and sympy's string parser only accepts
   checked expressions.

Bounds and the wording of refusals live in :mod:`edgeq.models.pt2.limits`: every refusal is a
``ModelLoadError`` naming what is wrong. ``modularize`` (:mod:`edgeq.models.pt2.layers`) turns the
program's ``aten.linear`` / ``aten.embedding`` / ``aten.conv2d`` calls on parameters back into
``nn.Linear`` / ``nn.Embedding`` / ``nn.Conv2d`` submodules, so the same per-layer quantization
applies as for a model given as Python code (``fc1.weight`` → ``fc1``).

No module here imports torch at import time.

>>> from edgeq.models.pt2 import modularize, safe_load
>>> gm = modularize(safe_load("model.pt2"))  # doctest: +SKIP
"""

from edgeq.models.pt2.layers import modularize
from edgeq.models.pt2.load import safe_load

__all__ = ["modularize", "safe_load"]
