"""The studio: the review pages served live, with controls that act on the build.

Layer: **steer**. A Starlette app (served by uvicorn) over one project:

- ``GET /review/…``: the review pages, brought up to date first by ``doit review [STORY]``
  (a subprocess: a fresh doit state every time) and rendered with the controls;
- ``GET /<path>``: a file under the project's ``build/`` (images, audio, takes) — nothing
  outside it, nor cloops' own state (``build/.cloops``);
- ``POST /api/pick|lock|unlock|restore|edit``: the steering functions the CLI commands use
  (:mod:`cloops.steer.actions`, :mod:`cloops.steer.takes`, :mod:`cloops.steer.history`);
- ``POST /api/build`` and ``POST /api/take``: ``doit build:<story>`` as a subprocess, its
  output streamed to the page as it is printed (one build at a time);
- ``GET /api/estimate?target=…``: what another take would cost (config prices).

Safe by default: it binds to 127.0.0.1; the Host header must name this server (no DNS
rebinding); every POST carries the session token (``X-Cloops-Token``, a random value put in
the pages it serves) and, when the browser sends one, an Origin of this server. Bound to any
other address, every request needs the token (``?token=`` once, then a cookie).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from ...core.errors import CloopsError, InputError
from ...data.project import BUILD_DIR, Project
from ..actions import (begin_take, build_command, edit_field, edit_text, estimate_take, lock_all,
                       open_state, unlock_one)
from ..address import Address, need_target, resolve
from ..history import restore
from ..takes import pick_take, store_take
from .site import REVIEW_DIR, index_data, read_model, render, review_dir

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
TOKEN_HEADER = "x-cloops-token"
TOKEN_COOKIE = "cloops_token"
CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; "
       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'")


class Refused(Exception):
    """A request the studio refuses: ``status`` and a message for the person."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _hostname(host_header: str) -> str:
    """``127.0.0.1:8321`` → ``127.0.0.1``; ``[::1]:8321`` → ``[::1]``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Studio:
    """The studio's state: the project, the session token, the allowed hosts, the build lock.

    Attributes:
        proj: the project.
        token: the session token (``secrets.token_urlsafe(32)``), or the ``CLOOPS_STUDIO_TOKEN``
            environment variable when set.
        open_access: bound to loopback: GET requests need no token.
        hosts: host names the Host header may carry.
    """

    def __init__(self, proj: Project, *, host: str = "127.0.0.1"):
        self.proj = proj
        self.build = (proj.root / BUILD_DIR).resolve()
        self.token = os.environ.get("CLOOPS_STUDIO_TOKEN") or secrets.token_urlsafe(32)
        self.open_access = host in LOOPBACK
        self.hosts = set(LOOPBACK)
        if not self.open_access:
            self.hosts |= {host.lower(), socket.gethostname().lower(), socket.getfqdn().lower()}
        self.busy = threading.Lock()  # one build or change at a time

    # ------------------------------------------------------------ checks

    def check(self, method: str, headers: dict[str, str], query: dict[str, str],
              cookies: dict[str, str]) -> None:
        """Refuse a request with a foreign Host, a POST without the session token or from
        another origin, and, when not bound to loopback, any request without the token.

        Raises:
            Refused: 400 (Host) or 403 (token, origin).
        """
        host = headers.get("host", "")
        if _hostname(host) not in self.hosts:
            raise Refused(400, f"Host {host!r} is not this studio: open it as "
                               "http://127.0.0.1:<port>/ (requests naming another host are "
                               "refused, against DNS rebinding).")
        given = headers.get(TOKEN_HEADER) or cookies.get(TOKEN_COOKIE) or query.get("token") or ""
        has_token = hmac.compare_digest(given.encode(), self.token.encode())
        if method not in ("GET", "HEAD"):
            if not hmac.compare_digest(headers.get(TOKEN_HEADER, "").encode(),
                                       self.token.encode()):
                raise Refused(403, "this change needs the session token (the X-Cloops-Token "
                                   "header the studio's pages send): reload the page.")
            origin = headers.get("origin")
            if origin and origin != "null" and urlsplit(origin).netloc.lower() != host.lower():
                raise Refused(403, f"a change from another origin ({origin}) is refused.")
        elif not self.open_access and not has_token:
            raise Refused(403, "this studio is not on loopback: open the address with "
                               "?token=… printed when it started.")

    def file(self, path: str) -> Path:
        """The file under build/ that URL ``path`` names.

        Raises:
            Refused: 403 for a path outside build/ or into cloops' state; 404 when missing.
        """
        parts = path.split("/")
        if any(p in ("..", ".") for p in parts) or "\\" in path or "\x00" in path:
            raise Refused(403, f"{path!r} leaves the build folder: only files under "
                               f"{BUILD_DIR}/ are served.")
        parts = [p for p in parts if p]
        if not parts or parts[0] == ".cloops" or parts[:2] == [REVIEW_DIR, ".cloops"]:
            raise Refused(403, f"{path!r} is cloops' own state, not served.")
        full = (self.build / "/".join(parts)).resolve()
        if not full.is_relative_to(self.build):
            raise Refused(403, f"{path!r} leaves the build folder: only files under "
                               f"{BUILD_DIR}/ are served.")
        if not full.is_file():
            raise Refused(404, f"{BUILD_DIR}/{'/'.join(parts)} does not exist.")
        return full

    # ------------------------------------------------------------ pages

    def refresh(self, key: str | None) -> None:
        """Bring the review pages of one story (or all) up to date: ``doit review [key]``.

        Raises:
            Refused: 500 with doit's error when it fails.
        """
        argv = [sys.executable, "-m", "doit", "review"] + ([key] if key else [])
        proc = subprocess.run(argv, cwd=self.proj.root, capture_output=True, text=True,
                              env=dict(os.environ))
        if proc.returncode != 0:
            raise Refused(500, "doit review failed: " + (proc.stderr or proc.stdout).strip()[-2000:])

    def story(self, template: str, story_id: str) -> str:
        """The live page of one story.

        Raises:
            Refused: 404 for an unknown story.
        """
        addr = self.address(f"{template}/{story_id}")
        self.refresh(addr.key)
        model = read_model(review_dir(self.proj), addr.template, addr.story_id)
        if model is None:
            raise Refused(500, f"doit review made no page for {addr.key}.")
        return render("story.html.j2", 2, studio=True, token=self.token, m=model)

    def index(self, template: str | None) -> str:
        """The live index of one template (or of the templates).

        Raises:
            Refused: 404 for an unknown template.
        """
        known = [b.template for b in self.proj.backlogs]
        if template is not None and template not in known:
            raise Refused(404, f"no template {template!r} has a backlog "
                               f"(templates: {', '.join(known)}).")
        self.refresh(None)
        indexes, summary = index_data(self.proj, {})
        if template is None:
            return render("index.html.j2", 0, studio=True, token=self.token, templates=summary)
        cards, totals = indexes[template]
        return render("template.html.j2", 1, studio=True, token=self.token, template=template,
                      cards=cards, totals=totals)

    # ------------------------------------------------------------ actions

    def address(self, text: Any, *, target: bool = False) -> Address:
        """Resolve a story key or target path sent by a page.

        Raises:
            Refused: 404 for an unknown story or target, 400 for a malformed one.
        """
        if not isinstance(text, str) or not text:
            raise Refused(400, "name a story or target (\"target\": \"<template>/<id>/<file>\").")
        try:
            addr = resolve(self.proj, text)
        except InputError as exc:
            raise Refused(404, str(exc)) from None
        if target:
            try:
                need_target(addr, "this")
            except InputError as exc:
                raise Refused(400, str(exc)) from None
        return addr

    def act(self, action: str, body: dict) -> str:
        """Do one change (``pick``, ``lock``, ``unlock``, ``restore``, ``edit``); return what
        was done, for the person.

        Raises:
            Refused: 404 unknown story/target/action, 400 a refused change (nothing changed),
                409 a build is running.
        """
        handlers = {"pick": self._pick, "lock": self._lock, "unlock": self._unlock,
                    "restore": self._restore, "edit": self._edit}
        if action not in handlers:
            raise Refused(404, f"no action {action!r}.")
        if not self.busy.acquire(blocking=False):
            raise Refused(409, "a build is running: wait for it to end.")
        try:
            return handlers[action](body)
        except CloopsError as exc:
            raise Refused(400, str(exc)) from None
        finally:
            self.busy.release()

    def _pick(self, body: dict) -> str:
        addr = self.address(body.get("target"), target=True)
        k = _number(body.get("take"), "take")
        out = pick_take(addr, k)
        if not out.changed:
            return f"take {k} is already the current {addr.rel}."
        return (f"take {k} of {addr.rel} is in place (no service called); a rebuild "
                "rebuilds what is downstream of it.")

    def _lock(self, body: dict) -> str:
        addr = self.address(body.get("target"))
        if addr.rel is not None:
            self.address(body.get("target"), target=True)
        return "🔒 locked " + ", ".join(lock_all([addr]))

    def _unlock(self, body: dict) -> str:
        addr = self.address(body.get("target"))
        if addr.rel is not None:
            self.address(body.get("target"), target=True)
        dep = open_state(self.proj)
        try:
            out = unlock_one(self.proj, addr, dep, None)
        finally:
            dep.close()
        if out.why_not == "not locked":
            return f"{addr.shown} was not locked."
        if out.why_not == "story locked":
            return f"{addr.shown} is locked with its whole story: unlock the story."
        stale = "".join(f"; {rel} went stale while locked ({why}): a rebuild makes it again"
                        for rel, why in out.stale)
        return f"🔓 unlocked {addr.key if addr.rel is None else addr.rel}{stale}"

    def _restore(self, body: dict) -> str:
        addr = self.address(body.get("target"), target=True)
        number = _number(body.get("version"), "version")
        chosen, kept = restore(addr, number)
        if chosen.current or kept is None:
            return f"{addr.rel} already holds version {number}."
        return (f"restored {addr.rel} to version {number} ({chosen.why}); it counts as a hand "
                "edit: a rebuild keeps it and rebuilds what is downstream.")

    def _edit(self, body: dict) -> str:
        addr = self.address(body.get("target"), target=True)
        if "field" in body:
            field = body["field"]
            if not isinstance(field, list) or not field or \
                    not all(isinstance(p, (str, int)) for p in field):
                raise Refused(400, "\"field\" must be a JSON path such as [\"pages\", 0, "
                                   "\"narration\"].")
            changed = edit_field(addr, field, body.get("value"))
        elif isinstance(body.get("text"), str):
            changed = edit_text(addr, body["text"])
        else:
            raise Refused(400, "send \"text\" (the whole file) or \"field\" and \"value\".")
        if not changed:
            return f"{addr.rel} already says that: nothing changed."
        return (f"{addr.rel} saved as a hand edit (the previous version is in its history); "
                "the next build keeps it and rebuilds what follows.")

    def estimate(self, target: Any) -> dict:
        """What another take of ``target`` would cost (JSON-ready)."""
        addr = self.address(target, target=True)
        return {"target": addr.shown, **estimate_take(self.proj, addr).as_json()}

    # ------------------------------------------------------------ builds

    def start_build(self, body: dict, take: bool) -> tuple[Address, list[str], dict, int | None]:
        """Check and prepare a build (``take``: a new take of one target first).

        Returns ``(address, argv, env, take kept)``; the caller streams the build and then
        calls :meth:`end_build`. The build lock is held until then.

        Raises:
            Refused: 404 unknown story or target, 400 a refused take, 409 a build is running.
        """
        addr = (self.address(body.get("target"), target=True) if take
                else self.address(body.get("story")))
        if not self.busy.acquire(blocking=False):
            raise Refused(409, "a build is running: wait for it to end.")
        try:
            before = None
            if take:
                dep = open_state(self.proj)
                try:
                    before = begin_take(self.proj, addr, dep, None)
                finally:
                    dep.close()
            argv, env = build_command(self.proj, addr.key, reroll=addr.task if take else None)
            env["COLUMNS"] = "120"
            return addr, argv, env, before
        except CloopsError as exc:
            self.busy.release()
            raise Refused(400, str(exc)) from None
        except BaseException:
            self.busy.release()
            raise

    def end_build(self, addr: Address, before: int | None) -> str:
        """Release the build lock; after a take, store the new file as a take and say which."""
        try:
            if before is None:
                return ""
            if not (addr.story_dir / addr.rel).is_file():
                return f"the build did not make {addr.rel}; take {before} is kept."
            k, new = store_take(addr)
            if new:
                return f"take {k} of {addr.rel} is current (take {before} is kept)."
            return (f"the new take is the same as take {k}: the backend answered the same "
                    "(offline backends and deterministic models do).")
        finally:
            self.busy.release()


def _number(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refused(400, f"\"{what}\" must be a number.")
    return value


def create_app(studio: Studio):
    """The Starlette application of a :class:`Studio`."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import (FileResponse, HTMLResponse, JSONResponse, RedirectResponse,
                                     Response, StreamingResponse)
    from starlette.routing import Route

    def refused(request: Request, exc: Refused) -> Response:
        if request.url.path.startswith("/api/") or request.method != "GET":
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        page = render("error.html.j2", 0, status=exc.status, message=exc.message)
        return HTMLResponse(page, status_code=exc.status)

    async def guard(request: Request) -> None:
        studio.check(request.method, {k.lower(): v for k, v in request.headers.items()},
                     dict(request.query_params), dict(request.cookies))

    def html(text: str, request: Request) -> Response:
        resp = HTMLResponse(text, headers={"Cache-Control": "no-store"})
        if not studio.open_access and request.query_params.get("token"):
            resp.set_cookie(TOKEN_COOKIE, studio.token, httponly=True, samesite="strict")
        return resp

    async def home(request: Request) -> Response:
        return RedirectResponse("/review/index.html", status_code=303)

    async def review_index(request: Request) -> Response:
        return html(await asyncio.to_thread(studio.index, None), request)

    async def template_index(request: Request) -> Response:
        return html(await asyncio.to_thread(studio.index, request.path_params["template"]),
                    request)

    async def story(request: Request) -> Response:
        p = request.path_params
        return html(await asyncio.to_thread(studio.story, p["template"], p["story"]), request)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        here = Path(__file__).resolve().parent / "static" / name
        if "/" in name or not here.is_file():
            raise Refused(404, f"no static file {name!r}.")
        return FileResponse(here, headers={"Cache-Control": "no-cache"})

    async def build_file(request: Request) -> Response:
        path = request.path_params["path"]
        if path.startswith("api/"):
            raise Refused(405, "a change is a POST carrying the session token.")
        return FileResponse(studio.file(path))

    async def body_of(request: Request) -> dict:
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError:
            raise Refused(400, "the request body is not JSON.") from None
        if not isinstance(data, dict):
            raise Refused(400, "the request body must be a JSON object.")
        return data

    async def act(request: Request) -> Response:
        action = request.path_params["action"]
        data = await body_of(request)
        message = await asyncio.to_thread(studio.act, action, data)
        return JSONResponse({"ok": True, "message": message})

    async def estimate(request: Request) -> Response:
        return JSONResponse(studio.estimate(request.query_params.get("target")))

    async def build(request: Request) -> Response:
        take = request.url.path.endswith("/take")
        data = await body_of(request)
        addr, argv, env, before = await asyncio.to_thread(studio.start_build, data, take)

        async def lines():
            rc = None
            try:
                if before is not None:
                    yield (f"take {before} of {addr.rel} is stored; asking for a new one "
                           f"({addr.task}, response cache skipped)\n")
                yield f"$ doit build:{addr.key}\n"
                proc = await asyncio.create_subprocess_exec(
                    *argv, cwd=str(studio.proj.root), env=env, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT)
                assert proc.stdout is not None
                async for raw in proc.stdout:
                    yield raw.decode("utf-8", "replace")
                rc = await proc.wait()
            finally:
                note = await asyncio.to_thread(studio.end_build, addr, before)
            if note:
                yield note + "\n"
            yield f"exit {rc}\n"

        return StreamingResponse(lines(), media_type="text/plain; charset=utf-8",
                                 headers={"Cache-Control": "no-store",
                                          "X-Content-Type-Options": "nosniff"})

    routes = [
        Route("/", home),
        Route("/review/index.html", review_index),
        Route("/review/_static/{name}", static),
        Route("/review/{template}/index.html", template_index),
        Route("/review/{template}/stories/{story}.html", story),
        Route("/api/estimate", estimate),
        Route("/api/build", build, methods=["POST"]),
        Route("/api/take", build, methods=["POST"]),
        Route("/api/{action}", act, methods=["POST"]),
        Route("/{path:path}", build_file),
    ]

    app = Starlette(routes=routes, exception_handlers={Refused: refused})

    class Guard:
        """Checks every request before routing (Host, token, origin); sets the safety headers."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            request = Request(scope, receive)
            try:
                await guard(request)
            except Refused as exc:
                return await refused(request, exc)(scope, receive, send)

            async def send_with_headers(message):
                if message["type"] == "http.response.start":
                    extra = [(b"content-security-policy", CSP.encode()),
                             (b"x-content-type-options", b"nosniff"),
                             (b"referrer-policy", b"no-referrer"),
                             (b"x-frame-options", b"DENY")]
                    message = {**message, "headers": list(message.get("headers", [])) + extra}
                await send(message)
            return await self.inner(scope, receive, send_with_headers)

    return Guard(app)


def serve(proj: Project, *, host: str = "127.0.0.1", port: int = 8321,
          out: IO[str] = sys.stdout) -> None:
    """Serve the studio until Ctrl-C.

    Raises:
        InputError: the port is taken.
    """
    import uvicorn
    studio = Studio(proj, host=host)
    app = create_app(studio)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            lifespan="off")
    server = uvicorn.Server(config)
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror}).",
                         fix="choose another port with --port, or stop what uses it.") from None
    port = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    url = f"http://{shown}:{port}/review/index.html"
    if not studio.open_access:
        url += f"?token={studio.token}"
        print(f"cloops studio is listening on {host}, not loopback: every request needs the "
              "session token in this address.", file=out)
    print(f"cloops studio: {url}  (Ctrl-C stops it)", file=out, flush=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
