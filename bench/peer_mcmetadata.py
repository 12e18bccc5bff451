"""The peer, run in bench/.venv-peer: Media Cloud's mcmetadata.extract on the Zyte pages."""

import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import token_f1, zyte_pages  # noqa: E402

import mcmetadata  # noqa: E402

pages = zyte_pages()
t0 = time.perf_counter()
texts = []
for _, url, html, _ in pages:
    try:
        texts.append(mcmetadata.extract(url, html_text=html.decode("utf-8", "replace")).get("text_content") or "")
    except Exception:  # the peer raises on pages it cannot handle; that page scores 0
        texts.append("")
elapsed = time.perf_counter() - t0
f1 = sum(token_f1(t, p[3]) for t, p in zip(texts, pages)) / len(pages)
print(json.dumps({"pages": len(pages), "seconds": elapsed, "f1": f1,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
