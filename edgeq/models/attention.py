"""``nn.MultiheadAttention`` rewritten as four ``nn.Linear`` projections, so its weights can be
planned and quantized like any other linear.

PyTorch's attention module keeps q/k/v in one ``in_proj_weight`` parameter and hands it and
``out_proj.weight`` to a fused function, never calling a linear's forward: quantizing those
weights by swapping or wrapping modules changes nothing (or breaks export). ``split_attention``
replaces each such module by ``SplitAttention``, which computes the same function (same
arguments, masks, returned weights) through ``q_proj`` / ``k_proj`` / ``v_proj`` /
``out_proj``. The loader keeps a rewrite only if the model's outputs on its example inputs
stay the same (``edgeq.models``); a module with ``add_bias_kv`` or ``add_zero_attn`` is left
as it is and its weights stay fp32.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F


class SplitAttention(nn.Module):
    """``nn.MultiheadAttention``'s forward with separate q/k/v/out linears (eval numerics;
    dropout on attention weights in training mode, as the original)."""

    # read by nn.TransformerEncoderLayer's fused fast path, which this module declines
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        e, heads = mha.embed_dim, mha.num_heads
        self.embed_dim, self.num_heads, self.head_dim = e, heads, mha.head_dim
        self.batch_first, self.dropout = mha.batch_first, mha.dropout
        if mha._qkv_same_embed_dim:
            wq, wk, wv = mha.in_proj_weight.detach().chunk(3)
        else:
            wq, wk, wv = (mha.q_proj_weight.detach(), mha.k_proj_weight.detach(), mha.v_proj_weight.detach())
        bias = mha.in_proj_bias.detach().chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        self.q_proj, self.k_proj, self.v_proj = (_linear(w, b) for w, b in zip((wq, wk, wv), bias))
        self.out_proj = _linear(mha.out_proj.weight.detach(), None if mha.out_proj.bias is None
                                else mha.out_proj.bias.detach())
        self.train(mha.training)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:
            raise RuntimeError("need attn_mask if specifying the is_causal hint")  # as nn.MultiheadAttention
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        tgt, bsz, _ = query.shape  # (L, N, E) from here on, as torch's functional form
        src = key.shape[0]
        q = self.q_proj(query).reshape(tgt, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        k = self.k_proj(key).reshape(src, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        v = self.v_proj(value).reshape(src, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        mask = _additive(attn_mask, q.dtype)
        if mask is not None and mask.dim() == 2:
            mask = mask.unsqueeze(0)
        pad = _additive(key_padding_mask, q.dtype)
        if pad is not None:
            pad = pad.view(bsz, 1, 1, src).expand(-1, self.num_heads, -1, -1).reshape(bsz * self.num_heads, 1, src)
            mask = pad if mask is None else mask + pad
        if need_weights:
            scores = (q * math.sqrt(1.0 / self.head_dim)) @ k.transpose(-2, -1)
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            if self.training and self.dropout > 0:
                weights = F.dropout(weights, p=self.dropout)
            out = weights @ v
        else:
            if mask is not None:
                mask = mask.view(bsz, self.num_heads, -1, src) if mask.shape[0] > 1 else mask.unsqueeze(0)
            out = F.scaled_dot_product_attention(q.view(bsz, self.num_heads, tgt, self.head_dim),
                                                 k.view(bsz, self.num_heads, src, self.head_dim),
                                                 v.view(bsz, self.num_heads, src, self.head_dim), mask,
                                                 self.dropout if self.training else 0.0)
            out = out.view(bsz * self.num_heads, tgt, self.head_dim)
            weights = None
        out = self.out_proj(out.transpose(0, 1).reshape(tgt * bsz, self.embed_dim)).view(tgt, bsz, -1)
        if weights is not None:
            weights = weights.view(bsz, self.num_heads, tgt, src)
            weights = weights.mean(dim=1) if average_attn_weights else weights
            if not batched:
                weights = weights.squeeze(0)
        if not batched:
            return out.squeeze(1), weights
        return (out.transpose(0, 1) if self.batch_first else out), weights


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                      dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True: not attended) as -inf where True, a float mask as it is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def splittable(mha: nn.MultiheadAttention) -> str:
    """Why ``mha`` cannot be split ('' when it can)."""
    if mha.bias_k is not None or mha.bias_v is not None:
        return "add_bias_kv"
    if mha.add_zero_attn:
        return "add_zero_attn"
    return ""


def split_attention(model: nn.Module) -> tuple[list[str], list[str], list[Callable[[], None]]]:
    """Replace every splittable ``nn.MultiheadAttention`` in ``model`` by ``SplitAttention``.
    Returns (fqns split, notes on those left alone, the calls that undo each change)."""
    split, notes, undo = [], [], []
    for fqn, sub in list(model.named_modules()):
        if not isinstance(sub, nn.MultiheadAttention):
            continue
        if not fqn:
            notes.append("the model is an nn.MultiheadAttention itself: kept as it is, its projections stay fp32")
            continue
        why = splittable(sub)
        if why:
            notes.append(f"{fqn}: an nn.MultiheadAttention with {why} is kept as it is: its projections stay fp32")
            continue
        model.set_submodule(fqn, SplitAttention(sub))
        split.append(fqn)
        undo.append(lambda fqn=fqn, sub=sub: model.set_submodule(fqn, sub))
    if split:
        for sub in model.modules():  # its nested-tensor fast path reads the fused in_proj_weight
            if isinstance(sub, nn.TransformerEncoder) and getattr(sub, "use_nested_tensor", False):
                sub.use_nested_tensor = False
                undo.append(lambda sub=sub: setattr(sub, "use_nested_tensor", True))
    return split, notes, undo


def split_checked(model: nn.Module, run: Any) -> tuple[list[str], list[str]]:
    """``split_attention`` kept only if ``run()`` (the model on its example inputs, its first
    output tensor) gives the same numbers after it; otherwise every module is put back.
    Returns (fqns split, notes)."""
    with torch.no_grad():
        if not any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
            return [], []
        before = run()
        split, notes, undo = split_attention(model)
        if not split:
            return [], notes
        after = run()
    tol = 1e-4 * float(before.abs().amax()) + 1e-6 if before.numel() else 0.0
    if after.shape != before.shape or not bool(((after - before).abs() <= tol).all()):
        for put_back in undo:
            put_back()
        return [], notes + [f"{len(split)} nn.MultiheadAttention module(s) kept as they are (split into separate "
                            "linears, the model computed other numbers on its example inputs): their projections "
                            "stay fp32"]
    return split, notes + [f"{len(split)} nn.MultiheadAttention module(s) split into q/k/v/out linears, so their "
                           "weights are planned like other linears (same outputs on the example inputs)"]
