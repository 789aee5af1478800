"""The unchanged prefix of a model's forward, computed once for a sensitivity pass.

Sensitivity swaps one layer at a time and runs the whole model again. Every module whose
call ends before the swapped layer's first call starts computed the same thing as in the
fp32 run: nothing it read came from the swapped layer (a forward is a function of its
inputs; a module called more than once is never taken as unchanged). ``Prefix`` runs the
fp32 model once recording the order of module calls, once more keeping the outputs of the
modules some measured layer can skip (the largest such modules whose outputs are tensors: a
decoder's blocks, its embedding, its rotary table …), and while a layer is measured those modules return their
kept outputs instead of computing them. On a decoder LLM a layer in block ``i`` then
costs the blocks from ``i`` on plus the head, and the head alone costs only itself.

Only tensors (or tuples / lists of them and Nones) are kept, and each use gets a copy, so a model
that writes into a module's output in place cannot change what a later layer is measured
against. The kept outputs are bounded by ``max_bytes``; a module beyond the bound simply
runs (any subset of the skippable modules gives the same result).
"""

from __future__ import annotations

from typing import Any

# kept outputs beyond this are not kept (their modules run as usual)
MAX_BYTES = 1 << 30


class Prefix:
    """``Prefix(module, batch, fqns)``: ``reference`` is the fp32 output on ``batch``;
    ``with prefix.skipping(fqn):`` a forward of ``module`` reuses every kept output that
    ``fqn``'s swap cannot change."""

    def __init__(self, module: Any, batch: tuple[Any, ...], fqns: list[str], output: Any,
                 max_bytes: int = MAX_BYTES) -> None:
        self.module, self.batch = module, batch
        named = {}
        for name, m in module.named_modules():
            if name:
                named.setdefault(id(m), (name, m))
        self._modules = {name: m for name, m in named.values()}
        start, end, calls, keepable = self._order(output)
        self.reference = self._reference
        self._skippable = {f: _maximal(_ends_before(start, end, calls, f) & keepable) for f in fqns}
        wanted = set().union(*self._skippable.values()) if self._skippable else set()
        self.kept = self._keep(sorted(wanted, key=lambda n: end[n]), output, max_bytes)

    def _order(self, output: Any) -> tuple[dict[str, int], dict[str, int], dict[str, int], set[str]]:
        """When each module's (first) call started and ended, how often it was called, and
        which modules return what can be kept (tensors)."""
        start: dict[str, int] = {}
        keepable: set[str] = set()
        end: dict[str, int] = {}
        calls: dict[str, int] = {}
        clock = [0]

        def before(name: str) -> Any:
            def hook(_m: Any, _args: Any) -> None:
                clock[0] += 1
                start.setdefault(name, clock[0])
                calls[name] = calls.get(name, 0) + 1
            return hook

        def after(name: str) -> Any:
            def hook(_m: Any, _args: Any, out: Any) -> None:
                clock[0] += 1
                end[name] = clock[0]
                if _tensor_bytes(out) is not None:
                    keepable.add(name)
            return hook

        handles = [h for name, m in self._modules.items()
                   for h in (m.register_forward_pre_hook(before(name)), m.register_forward_hook(after(name)))]
        try:
            self._reference = output(self.module, self.batch)
        finally:
            for h in handles:
                h.remove()
        return start, end, calls, keepable

    def _keep(self, names: list[str], output: Any, max_bytes: int) -> dict[str, Any]:
        kept: dict[str, Any] = {}
        used = [0]

        def store(name: str) -> Any:
            def hook(_m: Any, _args: Any, out: Any) -> None:
                size = _tensor_bytes(out)
                if size is not None and used[0] + size <= max_bytes:
                    kept[name] = _copy(out)
                    used[0] += size
            return hook

        handles = [self._modules[n].register_forward_hook(store(n)) for n in names]
        try:
            output(self.module, self.batch)
        finally:
            for h in handles:
                h.remove()
        return kept

    def skipping(self, fqn: str) -> "_Skipping":
        names = [n for n in self._skippable.get(fqn, ()) if n in self.kept]
        return _Skipping([(self._modules[n], self.kept[n]) for n in names])


class _Skipping:
    def __init__(self, pairs: list[tuple[Any, Any]]) -> None:
        self.pairs = pairs

    def __enter__(self) -> None:
        for m, out in self.pairs:
            m.forward = (lambda kept: lambda *_a, **_k: _copy(kept))(out)

    def __exit__(self, *exc: Any) -> None:
        for m, _ in self.pairs:
            del m.forward


def _ends_before(start: dict[str, int], end: dict[str, int], calls: dict[str, int], fqn: str) -> set[str]:
    """Modules called once whose call ended before ``fqn``'s first call started."""
    if fqn not in start:
        return set()
    first = start[fqn]
    return {n for n, c in calls.items() if c == 1 and n in end and end[n] < first}


def _maximal(names: set[str]) -> set[str]:
    """The names in ``names`` none of whose ancestors is in ``names``."""
    def ancestors(n: str) -> list[str]:
        parts = n.split(".")
        return [".".join(parts[:i]) for i in range(1, len(parts))]
    return {n for n in names if not any(a in names for a in ancestors(n))}


def _tensor_bytes(out: Any, inside: bool = False) -> int | None:
    """Bytes of a tensor or a (nested) tuple / list of tensors (and Nones); None for anything else."""
    import torch

    if out is None:  # a module that returns nothing is run for what it does: never skipped
        return 0 if inside else None
    if torch.is_tensor(out):
        return out.numel() * out.element_size()
    if isinstance(out, (tuple, list)) and type(out) in (tuple, list):
        sizes = [_tensor_bytes(o, inside=True) for o in out]
        return None if any(s is None for s in sizes) else sum(sizes)
    return None


def _copy(out: Any) -> Any:
    import torch

    if out is None:
        return None
    if torch.is_tensor(out):
        return out.clone()
    return type(out)(_copy(o) for o in out)
