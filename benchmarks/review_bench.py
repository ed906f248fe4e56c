"""cloops benchmark: ``doit review`` over 1,000 built stories.

Run from the repository root (after ``pip install -e '.[test]'``)::

    python benchmarks/review_bench.py            # 1,000 stories (a few minutes to build them)
    python benchmarks/review_bench.py --n 100    # smaller, for a smoke test

The stories are built with the in-process fake paid backends (``tests/fakes/backends.py``) and
a fake image backend returning page-sized JPEGs (``benchmarks/bench_images.py``: 576×1024
pages, 1024×1024 covers), so previews cost what they cost with real pictures. Then real
``doit review`` processes are timed: the first (every page, every preview), a re-run with
nothing changed, and a re-run after one story's prompt was edited by hand (which must rewrite
that story's page and the index only). Each figure is printed next to its target.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench import FAKE_ENV, doit, line, make_project  # noqa: E402

ENV = {**FAKE_ENV, "CLOOPS_PLUGINS": "tests.fakes.backends,benchmarks.bench_images",
       "CLOOPS_IMAGE_BACKEND": "bench-image"}


def html_mtimes(root: Path) -> dict[str, int]:
    review = root / "build" / "review"
    return {p.relative_to(review).as_posix(): p.stat().st_mtime_ns
            for p in review.rglob("*.html")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="stories (default 1000)")
    args = ap.parse_args()
    n = args.n
    print(f"machine: {platform.machine()}, {platform.python_version()}, "
          f"{__import__('os').cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="cloops-review-bench-") as tmp:
        root = make_project(Path(tmp) / "review", n)
        t0 = time.perf_counter()
        doit(root, env=ENV)
        images = sum(1 for _ in (root / "build").glob("comic-books-standard/*/images/*.jpg"))
        print(f"  (built {n} stories, {images} page images + {n} covers, in "
              f"{time.perf_counter() - t0:.1f}s)")
        print(f"doit review over {n} built stories")
        dt, rss, out = doit(root, "review", env=ENV)
        line("first run: every page, index and preview", f"{dt:.2f} s",
             "a few seconds per 1,000 (previews are made once)", None)
        print(f"    {out.strip().splitlines()[-1]}")
        before = html_mtimes(root)
        dt, rss, out = min((doit(root, "review", env=ENV) for _ in range(3)), key=lambda r: r[0])
        line("re-run, nothing changed (best of 3)", f"{dt:.2f} s", "≤ 3 s at 1,000",
             dt <= 3 if n >= 1000 else None)
        assert html_mtimes(root) == before, "a re-run with nothing changed rewrote pages"
        sid = "story-00500" if n >= 500 else "story-00001"
        prompt = root / "build" / "comic-books-standard" / sid / "prompts" / "2.txt"
        prompt.write_text("A hand-written prompt.\n")
        dt, rss, out = doit(root, "review", env=ENV)
        after = html_mtimes(root)
        changed = sorted(r for r, t in after.items() if before.get(r) != t)
        line("re-run after one story was edited", f"{dt:.2f} s", "≤ 3 s at 1,000",
             dt <= 3 if n >= 1000 else None)
        print(f"    rewritten: {', '.join(changed)}")
        line("peak RSS of that run", f"{rss / 1024:.0f} MB", "-", None)


if __name__ == "__main__":
    main()
