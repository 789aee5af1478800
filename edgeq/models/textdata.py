"""Real English text that ships with Python: sentences from standard-library docstrings.

Used as the built-in calibration and held-out evaluation text for text models, so that
fidelity is measured on real sentences with no download. The two splits never share a
sentence: sentence *i* (in a fixed, sorted order) goes to the held-out split when
``i % 4 == 3``, otherwise to calibration.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re

# A fixed list so the corpus does not depend on what else is installed.
_MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections",
    "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "email.message", "enum", "fractions", "functools",
    "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser", "http.client",
    "http.server", "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "locale",
    "logging", "mailbox", "mimetypes", "multiprocessing.pool", "numbers", "operator",
    "optparse", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "sched",
    "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket",
    "socketserver", "sqlite3", "ssl", "statistics", "string", "struct", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace",
    "traceback", "types", "typing", "unittest.case", "urllib.parse", "urllib.request",
    "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile", "zoneinfo",
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_GOOD = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'()\-]+[a-z)][.!?]$")


@functools.lru_cache(maxsize=1)
def _all_sentences() -> tuple[str, ...]:
    found: set[str] = set()
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # e.g. a Python built without sqlite3 or ssl
            continue
        docs = [inspect.getdoc(module) or ""]
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            docs.append(inspect.getdoc(obj) or "")
        for doc in docs:
            for paragraph in doc.split("\n\n"):
                text = " ".join(paragraph.split())
                for sentence in _SENTENCE_END.split(text):
                    words = sentence.split()
                    if 6 <= len(words) <= 40 and _GOOD.match(sentence):
                        found.add(sentence)
    return tuple(sorted(found))


def sentences(split: str, n: int | None = None) -> list[str]:
    """Up to ``n`` sentences of the ``"calib"`` or ``"heldout"`` split, in a fixed order."""
    if split not in ("calib", "heldout"):
        raise ValueError(f"split must be 'calib' or 'heldout', not {split!r}")
    everything = _all_sentences()
    chosen = [s for i, s in enumerate(everything) if (i % 4 == 3) == (split == "heldout")]
    return chosen if n is None else chosen[:n]
