"""cloops benchmark: start-up and up-to-date cost, calls per edit, makespan, peak memory, ad renders,
the README's offline build.

Run from the repository root (after ``pip install -e '.[test]'``)::

    python benchmarks/bench.py            # everything (several minutes)
    python benchmarks/bench.py --quick    # smaller N, for a smoke test

Every figure is printed next to its target (issue: "Scale: many stories at once within rate
limits"). Builds run in throwaway projects under a temp dir with a synthetic backlog:

- start-up / up-to-date figures use the in-process fake paid backends (``tests/fakes/backends.py``)
  to build the state quickly, then time real ``doit`` processes that have nothing to do;
- the makespan uses the real ``openai`` and ``replicate`` SDKs against loopback fake servers
  (``tests/fakes``) answering after a fixed latency per call;
- peak memory is the doit process's maximum resident set size;
- the ad clips' render times come from ``benchmarks/render_bench.py`` (section E);
- section F runs the README's offline build (every shipped backlog, no keys) in a copy of the
  project: its wall time, CPU seconds and peak memory (issue 24).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FAKE_ENV = {"CLOOPS_PLUGINS": "tests.fakes.backends", "CLOOPS_LLM_BACKEND": "fake-llm",
            "CLOOPS_IMAGE_BACKEND": "fake-image", "PYTHONPATH": str(REPO)}
SECRET_VARS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LLM_API_KEY", "REPLICATE_API_TOKEN",
               "REPLICATE_BASE_URL", "ELEVENLABS_API_KEY", "COMFYUI_URL")
# Not passed to the timed doit processes: with PYTHONDONTWRITEBYTECODE set (as in some
# sandboxes) an editable checkout never gets its __pycache__, and every start compiles the
# ~60 cloops modules it imports from source (+20 % CPU for `doit build:<id>`, measured with
# farm-bench on 2026-12-04) - a cost no installed cloops has (pip writes the .pyc files).
NOT_PASSED = SECRET_VARS + ("PYTHONDONTWRITEBYTECODE",)
RUNNER = ("import resource, sys\n"
          "from doit.doit_cmd import DoitMain\n"
          "from doit.cmd_base import DodoTaskLoader\n"
          "rc = DoitMain(DodoTaskLoader()).run(sys.argv[1:])\n"
          "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
          "sys.exit(rc)\n")


def story(i: int) -> dict:
    return {"id": f"story-{i:05d}", "status": "pending",
            "input": {"title": f"Story {i}", "summary": f"Synthetic story number {i} for the benchmark.",
                      "keyMoments": [f"moment {k} of story {i}" for k in range(1, 6)]},
            "completedAt": None, "error": None}


def make_project(root: Path, n: int, *, pages: int | None = None) -> Path:
    """A project with the standard template and a synthetic backlog of ``n`` stories."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "templates").mkdir()
    shutil.copytree(REPO / "templates" / "comic-books-standard",
                    root / "templates" / "comic-books-standard")
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    (root / "backlogs").mkdir()
    write_backlog(root, [story(i) for i in range(1, n + 1)])
    cfg_path = root / "templates" / "comic-books-standard" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["generation"]["params"]["size"] = "1K"
    cfg["generation"]["requestsPerMinute"] = None  # measure cloops, not Replicate's 600/minute
    if pages:
        cfg["settings"]["pageCount"] = {"min": pages, "max": pages}
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return root


def write_backlog(root: Path, items: list[dict]) -> None:
    (root / "backlogs" / "comic-books-standard.json").write_text(
        json.dumps({"templateId": "comic-books-standard", "items": items}, indent=2))


def doit(root: Path, *args: str, env: dict | None = None) -> tuple[float, int, str]:
    """Run doit in ``root``; return (wall seconds, peak RSS in KB, output)."""
    full = {k: v for k, v in os.environ.items() if k not in NOT_PASSED}
    full.update({"NO_PROXY": "127.0.0.1,localhost", "COLUMNS": "160"})
    full.update(env or {})
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUNNER, *args], cwd=root, env=full,
                          capture_output=True, text=True)
    dt = time.perf_counter() - t0
    rss = 0
    for line in proc.stderr.splitlines():
        if line.startswith("MAXRSS_KB"):
            rss = int(line.split()[1])
    if proc.returncode != 0:
        raise SystemExit(f"doit {' '.join(args)} failed in {root}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return dt, rss, proc.stdout


def best_of(k: int, fn):
    runs = [fn() for _ in range(k)]
    return min(runs, key=lambda r: r[0])


def line(name: str, value: str, target: str, ok: bool | None) -> None:
    mark = "" if ok is None else ("  OK" if ok else "  MISSED")
    print(f"  {name:<58} {value:>14}   target {target}{mark}")


# ---------------------------------------------------------------- A. start-up / up to date

def startup(tmp: Path, sizes: list[int]) -> int:
    print("A. Start-up and up-to-date checks (best of 3 runs, nothing to do)")
    peak_kb = 0
    for n in sizes:
        root = make_project(tmp / f"startup-{n}", n)
        t0 = time.perf_counter()
        _, _, out = doit(root, env=FAKE_ENV)  # build all n (fake backends: every story completed)
        build_s = time.perf_counter() - t0
        print(f"  (built {n} stories with in-process fakes in {build_s:.1f}s)")
        # issue 24: the engine's own time per task, the fakes answering at once (the whole
        # build's wall time, start-up and summary included, over the tasks it ran)
        ran = re.search(r"(\d+) tasks ran", out)
        if ran:
            tasks = int(ran.group(1))
            per_ms = 1000 * build_s / max(1, tasks)
            line(f"engine time per task, {tasks:,} tasks, instant fakes", f"{per_ms:.2f} ms",
                 "≤ 2 ms", per_ms <= 2.0 if tasks >= 10_000 else None)
        dt, rss, _ = best_of(3, lambda: doit(root, "build", env=FAKE_ENV))
        peak_kb = max(peak_kb, rss)
        target = 1.5 if n >= 1000 else None
        line(f"up-to-date check of all {n} stories (doit build)", f"{dt:.2f} s",
             "≤ 1.5 s at 1,000" if target else "-", dt <= target if target else None)
        items = json.loads((root / "backlogs" / "comic-books-standard.json").read_text())["items"]
        for it in items[:10]:
            it["status"] = "pending"
        write_backlog(root, items)
        dt, rss, out = best_of(3, lambda: doit(root, env=FAKE_ENV))
        line(f"bare doit, {n - 10} completed + 10 pending", f"{dt:.2f} s",
             "≤ 0.3 s at 1,000", dt <= 0.3 if n >= 1000 else None)  # issue 24
        dt, rss, _ = best_of(3, lambda: doit(root, "build:story-00005", env=FAKE_ENV))
        line(f"doit build:<id>, {n} stories", f"{dt:.2f} s", "≤ 0.3 s", dt <= 0.3)
    # build:<id> at a backlog size that is never built: only the backlog's size matters
    n = sizes[-1] * 10
    root = make_project(tmp / f"startup-{n}", n)
    doit(root, "build:story-00005", env=FAKE_ENV)
    dt, rss, _ = best_of(3, lambda: doit(root, "build:story-00005", env=FAKE_ENV))
    line(f"doit build:<id>, {n} stories in the backlog", f"{dt:.2f} s", "≤ 0.3 s", dt <= 0.3)
    return peak_kb


# ---------------------------------------------------------------- B. calls per edit

def calls_per_edit(tmp: Path) -> None:
    """Each rebuild rule's edit: paid calls made vs the minimal number."""
    from tests.conftest import Project
    print("B. Calls after each edit of the rebuild rules (3 stories, 4 pages each)")
    root = make_project(tmp / "rules", 3, pages=4)
    proj = Project(root)
    sid = "story-00002"
    base = proj.doit(env=FAKE_ENV)
    assert base.rc == 0, base.out + base.err
    pages = 4
    # every story's characters have a reference sheet each: an image the size and style touch
    sheets = sum(len(json.loads((proj.story_dir(f"story-{i:05d}") / "cast.json").read_text())
                     ["characters"]) for i in range(1, 4))

    def check(name: str, minimal: int, run) -> None:
        paid = sum(1 for c in run.calls if not c["cache_hit"])
        ratio = paid / minimal if minimal else (1.0 if paid == 0 else float("inf"))
        line(name, f"{paid}/{minimal} = {ratio:.2f}", "ratio 1.00", abs(ratio - 1.0) < 1e-9)

    run = proj.doit("build", env=FAKE_ENV)
    check("nothing changed (0 calls)", 0, run)
    p = proj.prompt_path("step3-prompts.md")
    p.write_text(p.read_text() + "\nPrefer wide shots.\n")
    check("step-3 prompt edited: prompt + image per page", 3 * 2 * pages, proj.doit("build", env=FAKE_ENV))
    proj.edit_config(lambda c: c["generation"]["params"].update(size="2K"))
    check("generation.params.size: images, thumbnails and sheets only", 3 * (pages + 1) + sheets,
          proj.doit("build", env=FAKE_ENV))
    proj.edit_config(lambda c: c["style"].update(artStyle="linocut"))
    check("style.artStyle: prompts, thumbnail prompt, sheets, their images",
          3 * (2 * pages + 2) + sheets, proj.doit("build", env=FAKE_ENV))
    f = proj.story_dir(sid) / "pages.json"
    plan = json.loads(f.read_text())
    plan["pages"][1]["narration"] = "Edited by hand."
    f.write_text(json.dumps(plan, indent=2))
    check("page 2 of pages.json hand-edited: prompt 2 + image 2", 2, proj.doit("build", env=FAKE_ENV))
    f = proj.story_dir(sid) / "prompts" / "3.txt"
    f.write_text("A hand-written prompt.\n")
    check("prompts/3.txt hand-edited: image 3", 1, proj.doit("build", env=FAKE_ENV))
    p.write_text(p.read_text().replace("\nPrefer wide shots.\n", ""))
    proj.edit_config(lambda c: c["style"].update(artStyle="children's book illustration"))
    proj.edit_config(lambda c: c["generation"]["params"].update(size="1K"))
    # every other target returns to a state built before (cache); the hand-edited page 2 of
    # one story meets the original prompt and style for the first time: its prompt and image
    check("all config/prompt edits reverted: only never-built combinations", 2,
          proj.doit("build", env=FAKE_ENV))


# ---------------------------------------------------------------- C. makespan

def plan_responder(pages: int):
    """Fake model answers: a plan of exactly ``pages`` pages, every string unique to its request
    (so no two image prompts are alike and nothing is deduplicated)."""
    from tests.fakes.openai_server import distinct_text

    def plan(data, req):
        if ((req.get("text") or {}).get("format") or {}).get("name") == "planning":
            page = data["pages"][0]
            data["pages"] = [dict(page, pageNumber=i + 1,
                                  panels=[dict(p, panel=k + 1) for k, p in enumerate(page["panels"])])
                             for i in range(pages)]
        return data
    return lambda path, body: distinct_text(path, body, plan)


# How predictions are created: "poll" is cloops' flow (no Prefer: wait, the id journaled at once,
# then polled); "wait" is the flow it replaced (Prefer: wait: the create is held open while the
# image is generated, and a kill meanwhile pays for it twice), measured for the trade only.
PREDICTION_FLOWS = {"poll": {}, "wait": {"CLOOPS_REPLICATE_PREFER_WAIT_S": "60"}}


def makespan(tmp: Path, n: int, pages: int, llm_s: float, image_s: float, image_limit: int,
             runs: int = 3, flows: tuple[str, ...] = ("poll", "wait")) -> None:
    """Time ``runs`` fresh builds of ``n`` stories per prediction flow (the flows alternate, so
    a busy spell of the shared machine hits both); print each and the medians against the
    ideal (one run can be 10 % off)."""
    import statistics

    from tests.fakes.openai_server import FakeOpenAI
    from tests.fakes.replicate_server import FakeReplicate
    print(f"C. Makespan of a fresh build: {n} stories x {pages} pages, {llm_s}s per LLM call, "
          f"{image_s}s per image, {image_limit} images at once (real SDKs, loopback fakes; "
          f"median of {runs} runs per prediction flow, the flows alternating)")
    times: dict[str, list[float]] = {flow: [] for flow in flows}
    polls: list[float] = []
    for k in range(runs):
        for flow in flows:
            root = make_project(tmp / f"makespan-{flow}-{k}", n, pages=pages)
            cfg_path = root / "templates" / "comic-books-standard" / "config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["generation"]["concurrency"] = image_limit
            cfg["generation"]["requestsPerMinute"] = None  # the measured limit: concurrency alone
            cfg["llm"]["concurrency"] = 64
            cfg_path.write_text(json.dumps(cfg, indent=2))
            with FakeOpenAI(latency_s=llm_s, responder=plan_responder(pages)) as oa, \
                    FakeReplicate(token="r8_bench", latency_s=image_s) as rp:
                env = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": oa.base_url,
                       "REPLICATE_API_TOKEN": "r8_bench", "REPLICATE_BASE_URL": rp.base_url,
                       "REPLICATE_POLL_INTERVAL": "0.01",  # worker threads: cloops' default
                       **PREDICTION_FLOWS[flow]}
                dt, rss, out = doit(root, env=env)
                images = len(rp.creates)
                if flow == "poll":
                    polls.append(len(rp.requests_to("/v1/predictions/", "GET")) / images)
            # one story's critical path: narrative, cast, plan, a page prompt (the sheets are
            # drawn meanwhile), then a page image
            ideal = images * image_s / image_limit + (4 * llm_s + image_s)
            times[flow].append(dt)
            print(f"  run {k + 1}, {flow:<4}: {dt:.2f}s = {dt / ideal:.3f} x ideal")
            shutil.rmtree(root, ignore_errors=True)
    median = {flow: statistics.median(ts) for flow, ts in times.items()}
    if "poll" in median:
        dt = median["poll"]
        line("makespan / ideal (median), predictions polled", f"{dt:.1f}s/{ideal:.1f}s = "
             f"{dt / ideal:.2f}", "≤ 1.10", dt / ideal <= 1.10)
        print(f"  ({images} image calls; ideal = image time / {image_limit} + one story's "
              f"critical path; {statistics.mean(polls):.1f} polls per prediction)")
    if "wait" in median:
        dt = median["wait"]
        line("makespan / ideal (median), Prefer: wait (replaced)", f"{dt:.1f}s/{ideal:.1f}s = "
             f"{dt / ideal:.2f}", "-", None)
    if len(median) == 2:
        extra_ms = (median["poll"] - median["wait"]) * image_limit / images * 1000
        line("what polling costs per image slot (median difference)", f"{extra_ms:+.0f} ms",
             "-", None)


# ---------------------------------------------------------------- F. the README's offline build

def _tree_rss_kb(root_pid: int) -> int:
    """The resident memory of ``root_pid`` and all its descendants, in KB (from /proc)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        pid = int(entry)
        parent[pid] = int(fields.get("PPid", "0").strip() or 0)
        rss[pid] = int((fields.get("VmRSS", "0 kB").split() or ["0"])[0])
    total = 0
    for pid in rss:
        p, seen = pid, 0
        while p and p != root_pid and seen < 64:
            p, seen = parent.get(p, 0), seen + 1
        if p == root_pid:
            total += rss[pid]
    return total


def offline_build(tmp: Path) -> None:
    """Issue 24: the README's set-up command's build - every shipped backlog on the offline
    backends (no key), from an empty build folder - timed, with its CPU seconds, the doit
    process's peak resident memory and the whole process tree's (doit and its FFmpeg runs,
    sampled every 0.2 s)."""
    import threading
    print("F. The README's offline build (every shipped backlog, offline backends, empty build/)")
    root = tmp / "readme"
    root.mkdir()
    for name in ("templates", "backlogs"):
        shutil.copytree(REPO / name, root / name)
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    env = {k: v for k, v in os.environ.items() if k not in NOT_PASSED and
           not k.startswith("CLOOPS_")}
    env.update({"NO_PROXY": "127.0.0.1,localhost", "COLUMNS": "160"})
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", RUNNER], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree_peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            tree_peak[0] = max(tree_peak[0], _tree_rss_kb(proc.pid))
            time.sleep(0.2)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"the offline build failed in {root}:\n{out[-3000:]}\n{err[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rss = next((int(x.split()[1]) for x in err.splitlines() if x.startswith("MAXRSS_KB")), 0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    clips = len(list((root / "build").rglob("ads/*.mp4")))
    proxies = sum(1 for m in (root / "build").rglob("ads/manifest.json")
                  for c in json.loads(m.read_text())["components"] if c.get("proxy"))
    print(f"  load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"{clips} clips rendered, {proxies} of them 540x960 draft proxies (ads.drafts)")
    line("wall time", f"{wall:.0f} s", "about 60 s (issue 24), idle", wall <= 75)
    line(f"CPU seconds (doit + FFmpeg); / {cores} cores", f"{cpu:.0f} / {cpu / cores:.0f} s",
         "-", None)
    line("peak RSS of the doit process", f"{rss / 1024:.0f} MB", "< 500 MB", rss / 1024 < 500)
    line("peak RSS of the process tree (doit + FFmpeg)", f"{tree_peak[0] / 1024:.0f} MB", "-",
         None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    ap.add_argument("--only", default="", help="comma list of sections: startup,calls,makespan,render,offline "
                         "(offline: not in --quick unless named)")
    ap.add_argument("--runs", type=int, default=3, help="makespan builds to take the median of")
    ap.add_argument("--flows", default="poll,wait",
                    help="prediction flows to time in the makespan: poll (cloops'), wait "
                         "(Prefer: wait, the flow it replaced)")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    sizes = [10, 100] if args.quick else [100, 1000]
    print(f"cloops benchmark on {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="cloops-bench-") as d:
        tmp = Path(d)
        peak = 0
        if not only or "startup" in only:
            peak = startup(tmp, sizes)
        if not only or "calls" in only:
            calls_per_edit(tmp)
        if not only or "makespan" in only:
            n = 10 if args.quick else 100
            flows = tuple(f for f in args.flows.split(",") if f)
            makespan(tmp, n, 5, 0.1, 0.2, 8, runs=1 if args.quick else args.runs, flows=flows)
        if peak:
            print("D. Peak memory")
            line(f"peak RSS of doit, {sizes[-1]} stories", f"{peak / 1024:.0f} MB",
                 "≤ 300 MB at 1,000", peak / 1024 <= 300 if sizes[-1] >= 1000 else None)
    if "offline" in only or (not only and not args.quick):
        with tempfile.TemporaryDirectory(prefix="cloops-bench-") as d:
            offline_build(Path(d))
    if not only or "render" in only:
        print("E. Rendering ad clips (benchmarks/render_bench.py)")
        sys.path.insert(0, str(REPO / "benchmarks"))
        from render_bench import figures
        figures(1 if args.quick else 3)


if __name__ == "__main__":
    main()
