"""The sensitivity pass reuses the outputs of the modules that run before a swapped layer
(``edgeq.planning.prefix``): its figures must be those of a full forward per (layer, scheme),
and the reused modules must really not run."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _tiny_llama():
    from edgeq.models.hf import _wrappers
    from tests import tiny_lms

    lm = tiny_lms.build("llama").eval()
    _, logits, _ = _wrappers()
    return logits(lm)


def _calib(n: int = 3, length: int = 12):
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 256, (1, length), generator=g), torch.ones(1, length, dtype=torch.int64))
            for _ in range(n)]


def _full_forward_errors(module, candidates, calib, fmt):
    """The definition: swap one layer's stand-in in, run the whole model, KL against fp32."""
    from edgeq.backends import get_backend
    from edgeq.planning.sensitivity import _batch, _error, _output, _swapped

    batch = _batch(calib)
    modules = dict(module.named_modules())
    out = {}
    with torch.no_grad():
        reference = _output(module, batch)
        for fqn, schemes in candidates.items():
            out[fqn] = {}
            for s in schemes:
                with _swapped(module, fqn, get_backend(fmt).stand_in(modules[fqn], s)):
                    out[fqn][s.name] = _error(reference, _output(module, batch), "kl")
    return out


@pytest.mark.parametrize("fmt", ["gguf", "executorch"])
def test_prefix_reuse_gives_the_full_forward_errors(fmt):
    from edgeq.planning import sensitivity
    from edgeq.schemes import INT4, INT8

    module = _tiny_llama()
    names = [n for n, m in module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    assert any(".layers.1." in n for n in names) and "model.lm_head" in names
    schemes = [INT8, INT4[32]]
    candidates = {n: schemes for n in names}
    calib = _calib()
    got = sensitivity.measure(module, [], candidates, calib, "kl", use_cache=False, fmt=fmt)
    want = _full_forward_errors(module, candidates, calib, fmt)
    assert got == want  # the same arithmetic on the same inputs: bit for bit
    assert all(v > 0 for per in want.values() for k, v in per.items())


def test_modules_before_the_swapped_layer_do_not_run():
    from edgeq.planning.prefix import Prefix
    from edgeq.planning.sensitivity import _batch, _output

    module = _tiny_llama()
    batch = _batch(_calib())
    head, first, last = "model.lm_head", "model.model.layers.0.mlp.down_proj", "model.model.layers.1.self_attn.q_proj"
    with torch.no_grad():
        prefix = Prefix(module, batch, [head, first, last], _output)
        calls: dict[str, int] = {}
        for name, m in module.named_modules():
            m.register_forward_pre_hook(lambda _m, _a, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
        for fqn in (head, first, last):
            calls.clear()
            with prefix.skipping(fqn):
                out = _output(module, batch)
            assert torch.equal(out, prefix.reference)
            ran = {n for n in calls if n}
            # (a reused module's own hooks still fire; what it would compute, its children, does not run)
            if fqn == head:  # only the head and the wrappers around the decoder run
                assert "model.model.layers.0.self_attn" not in ran and "model.model.layers.1.mlp" not in ran
                assert head in ran
            if fqn == last:  # block 0 is reused, block 1 runs
                assert "model.model.layers.0.self_attn" not in ran and "model.model.layers.1.self_attn" in ran
            if fqn == first:  # in block 0: its attention is reused, its MLP runs
                assert "model.model.layers.0.self_attn.q_proj" not in ran and "model.model.layers.0.mlp.up_proj" in ran
        calls.clear()
        _output(module, batch)  # outside ``skipping`` every module runs again
        assert "model.model.layers.0.self_attn.q_proj" in calls


def test_prefix_keeps_nothing_beyond_its_bound():
    from edgeq.planning.prefix import Prefix
    from edgeq.planning.sensitivity import _batch, _output

    module = _tiny_llama()
    batch = _batch(_calib())
    with torch.no_grad():
        bounded = Prefix(module, batch, ["model.lm_head"], _output, max_bytes=0)
        assert bounded.kept == {}
        with bounded.skipping("model.lm_head"):
            assert torch.equal(_output(module, batch), bounded.reference)
