"""``make demo``: serve the sample site in demo/site/ on 127.0.0.1, ingest it through
a real worker on the embedded default (SQLite database and broker), and print the
defence stories found, with their evidence.  Works offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .devserver import DevServer
from .settings import PROJECT_ROOT

SITE = PROJECT_ROOT / "demo" / "site"
CONTENT_TYPES = {".rss": "application/rss+xml", ".atom": "application/atom+xml", ".json": "application/feed+json",
                 ".html": "text/html; charset=utf-8"}


def mount_site(server: DevServer, site: Path = SITE) -> list[str]:
    """Serve every file of the sample site; feeds get the server's address filled in.
    Returns the feed URLs."""
    feeds = []
    for path in sorted(p for p in site.rglob("*") if p.is_file()):
        rel = "/" + path.relative_to(site).as_posix()
        body = path.read_bytes()
        if rel.startswith("/feeds/"):
            body = body.replace(b"{{BASE}}", server.base_url.encode())
            feeds.append(server.base_url + rel)
        server.add(rel, body, content_type=CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
    return feeds


def _cli(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "worker", *args], env=env, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"demo: `newsworker {' '.join(args)}` failed")
    return done.stdout


def main() -> None:
    var = Path(os.environ.get("NEWSWORKER_DEMO_DIR", "var/demo")).resolve()
    shutil.rmtree(var, ignore_errors=True)
    with DevServer() as server:
        feeds = mount_site(server)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSWORKER_")}
        env.update(NEWSWORKER_VAR_DIR=str(var), NEWSWORKER_ALLOWED_PRIVATE_HOSTS=server.host_port)
        print(f"demo: serving the sample site at {server.base_url}; data and worker log in {var}")
        _cli("db", "upgrade", env=env)
        for url in feeds:
            _cli("feeds", "add", url, env=env)
        log = open(var / "worker.log", "w")
        worker = subprocess.Popen([sys.executable, "-m", "worker", "worker", "--concurrency", "2", "--loglevel", "INFO"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            print(_cli("fetch", "--all", "--wait", "--timeout", "300", env=env), end="")
        finally:
            worker.terminate()
            worker.wait(timeout=60)
            log.close()
        rows = [json.loads(line) for line in _cli("articles", "list", "--tag", "defence", "--json", env=env).splitlines()]
    print(f"\n{len(rows)} defence stories found:")
    for row in rows:
        print(f"\n• {row['title']}\n  {row['url']}  ({row['language']}, published {row['published_at']})")
        for tag in row["tags"]:
            print(f"  {tag['name']:<22} score {tag['score']:.2f}  evidence: {'; '.join(tag['evidence'][:8])}")


if __name__ == "__main__":
    main()
