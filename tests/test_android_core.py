"""android-demo's ``core`` module (plain Java 17, no android.* imports): compiled with javac
against Debian's org.json (libandroid-json-java) and JUnit 4 (junit4), and its JUnit tests
run on a real bundle against references computed here: Hugging Face's tokenizer ids on
real sentences, numpy/statistics latency figures, torch pooling, a real ``edgeq profile``
report.

Skips (with the reason) when javac, junit4 or org.json are missing, unless CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli

CORE = ROOT / "android-demo" / "core"
JARS = {
    "org.json": Path("/usr/share/java/com.android.json.jar"),
    "junit4": Path("/usr/share/java/junit4.jar"),
    "hamcrest": Path("/usr/share/java/hamcrest-core.jar"),
}
TEST_CLASSES = ["dev.edgeq.core.WordPieceTokenizerTest", "dev.edgeq.core.BpeTokenizerTest", "dev.edgeq.core.BundleTest",
                "dev.edgeq.core.ResultsTest"]
EXTRA_TEXTS = [  # what docstrings lack: accents, CJK, symbols, odd whitespace, long words, truncation
    "Café déjà vu: naïve résumé, Ångström and Øresund!",
    "中文字符和English混合 text, with 日本語 too.",
    "Prices rose 3.5% to $1,234.56 (see §4) — or did they?",
    "Tabs\tand\nnewlines\u00a0and\u200bzero-width spaces",
    "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism",
    "x" * 120,
    "emoji 🙂 and symbols ≥ ≤ ± × ÷ © ®",
    " ".join(["A long sentence that goes past the maximum length of the model."] * 30),
]


def _tools_or_skip() -> str:
    missing = [n for n, p in JARS.items() if not p.is_file()]
    if shutil.which("javac") is None or shutil.which("java") is None:
        missing.insert(0, "javac/java (JDK 17)")
    if missing:
        reason = f"missing {', '.join(missing)} (apt-get install -y default-jdk-headless junit4 libandroid-json-java)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return os.pathsep.join(str(p) for p in JARS.values())


def _tokenizer_bundle(tmp: Path, minilm_dir: Path) -> Path:
    """A small BERT with MiniLM's real vocabulary and tokenizer, exported and bundled."""
    import torch
    from transformers import BertConfig, BertModel

    model_dir = tmp / "bert-minilm-vocab"
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(model_dir)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(minilm_dir / f, model_dir / f)
    art = tmp / "artifact"
    proc = run_cli("export", str(model_dir), "-t", "rpi5", "-o", str(art), "-q", "--seq-len", "32", "--samples", "4",
                   "--task", "sentence-embedding")
    assert proc.returncode == 0, proc.stderr
    from edgeq.bundle import bundle

    (tmp / "app").mkdir()
    return bundle(art, tmp / "app", bundle_id="bert").bundle_dir


def write_bpe_fixture(fx: Path) -> None:
    """A byte-level BPE tokenizer trained here with Hugging Face's tokenizers (no hub access),
    and its ids on held-out sentences the Java BPE must reproduce."""
    from tokenizers import ByteLevelBPETokenizer

    from edgeq.models import textdata

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(textdata.sentences("calib"), vocab_size=800, min_frequency=2, show_progress=False)
    tok.save(str(fx / "bpe_tokenizer.json"))
    texts = textdata.sentences("heldout", 220) + EXTRA_TEXTS
    cases = [{"text": t, "ids": tok.encode(t).ids} for t in texts]
    (fx / "bpe_cases.json").write_text(json.dumps({"tokenizer_json": str(fx / "bpe_tokenizer.json"), "cases": cases}))


def _write_fixtures(fx: Path, bundle_dir: Path, minilm_dir: Path) -> int:
    import torch
    from transformers import AutoTokenizer

    from edgeq.models import textdata
    from edgeq.profiling import profile_host

    fx.mkdir()
    hf = AutoTokenizer.from_pretrained(str(minilm_dir))
    max_length = json.loads((bundle_dir / "edgeq_bundle.json").read_text())["tokenizer"]["max_length"]
    texts = textdata.sentences("heldout", 150) + textdata.sentences("calib", 150) + EXTRA_TEXTS
    cases = []
    for text in texts:
        enc = hf(text, padding="max_length", truncation=True, max_length=max_length)
        cases.append({"text": text, "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    (fx / "tokenizer_cases.json").write_text(json.dumps({"bundle_dir": str(bundle_dir), "cases": cases}))

    rng = np.random.default_rng(5)
    samples = rng.lognormal(1.0, 0.4, 37).tolist()
    (fx / "stats.json").write_text(json.dumps({"samples_ms": samples, "latency_ms": {
        "min": min(samples), "p50": float(np.percentile(samples, 50)), "p90": float(np.percentile(samples, 90)),
        "max": max(samples), "mean": statistics.fmean(samples), "stdev": statistics.stdev(samples)}}))

    hidden = torch.from_numpy(rng.standard_normal((9, 6)).astype(np.float32))
    mask = torch.tensor([1, 1, 1, 1, 1, 0, 0, 1, 0])
    pooled = (hidden * mask[:, None]).sum(0) / mask.sum().clamp(min=1e-9)
    (fx / "pooling.json").write_text(json.dumps({
        "hidden": hidden.ravel().tolist(), "mask": mask.tolist(), "dim": 6, "pooled": pooled.tolist(),
        "normalized": torch.nn.functional.normalize(pooled, dim=-1).tolist()}))

    (fx / "profile.json").write_text(json.dumps(profile_host(bundle_dir, runs=3, warmup=1, ops=False)))
    write_bpe_fixture(fx)
    return len(cases)


def test_core_module_compiles_and_its_junit_tests_pass(tmp_path, minilm_dir):
    classpath = _tools_or_skip()
    sources = sorted(str(p) for p in (CORE / "src").rglob("*.java"))
    main_sources = [s for s in sources if "/src/main/" in s]
    for s in main_sources:  # the core module must run on a JVM as well as on Android
        assert "import android." not in Path(s).read_text(), s
    bundle_dir = _tokenizer_bundle(tmp_path, minilm_dir)
    n_cases = _write_fixtures(tmp_path / "fixtures", bundle_dir, minilm_dir)
    assert n_cases >= 200
    out = tmp_path / "classes"
    proc = subprocess.run(["javac", "--release", "17", "-Xlint:all", "-Werror", "-cp", classpath, "-d", str(out),
                           *sources], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(["java", f"-Dedgeq.fixtures={tmp_path / 'fixtures'}", "-cp", f"{out}{os.pathsep}{classpath}",
                           "org.junit.runner.JUnitCore", *TEST_CLASSES], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "OK (11 tests)" in proc.stdout, proc.stdout[-2000:]
