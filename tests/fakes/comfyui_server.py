"""A fake ComfyUI server on 127.0.0.1 speaking the HTTP API of ComfyUI's ``server.py``.

::

    with FakeComfyUI(polls_before_done=1) as srv:
        backend = ComfyUIBackend(srv.base_url, workflow, poll_interval_s=0.01)
        ...
        assert srv.workflows[0]["6"]["inputs"]["text"] == "a red fox"

Endpoints:

* ``POST /prompt {"prompt": <API-format workflow>, "client_id"}`` -> ``{"prompt_id", "number",
  "node_errors": {}}``; HTTP 400 ``{"error": {...}, "node_errors": {}}`` when ``prompt_error``
  is set or the workflow is not a dict of nodes.
* ``GET /history/{prompt_id}`` -> ``{}`` for the first ``polls_before_done`` polls, then
  ``{prompt_id: {"prompt": [...], "outputs": {node_id: {"images": [{"filename", "subfolder",
  "type": "output"}]}}, "status": {"status_str": "success", "completed": true, "messages"}}}``
  (``status_str: "error"`` with an ``execution_error`` message when ``execution_error`` is set).
* ``GET /view?filename=&subfolder=&type=`` -> the PNG (404 for unknown files).
* ``POST /queue {"delete": [ids]}`` -> ``{}``; the ids are recorded in ``deleted``.
"""

from __future__ import annotations

import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any

from .loopback import LoopbackServer, RecordedRequest
from .replicate_server import png_bytes

__all__ = ["FakeComfyUI", "RecordedRequest"]


class FakeComfyUI(LoopbackServer):
    """A scriptable fake ComfyUI.

    Args:
        polls_before_done: ``/history`` polls answered ``{}`` before the job has outputs
            (``None``: never finishes).
        image_size: output PNG size ``(width_px, height_px)``.

    Attributes (set them to script failures):
        prompt_error: a dict sent as ``{"error": prompt_error}`` with HTTP 400 on ``/prompt``.
        execution_error: an exception message: the job ends with ``status_str: "error"``.
        base_url: ``http://127.0.0.1:PORT``.
        requests: every :class:`RecordedRequest`.
        workflows: the submitted ``prompt`` workflows, in order.
        client_ids: the submitted ``client_id`` values.
        deleted: prompt ids removed through ``POST /queue``.
        files: ``{filename: png bytes}`` of the images produced (and uploaded).
        uploads: ``[(name, bytes)]`` of the images uploaded, in order.
    """

    thread_name = "fake-comfyui"

    def __init__(self, *, polls_before_done: int | None = 1,
                 image_size: tuple[int, int] = (40, 30)):
        super().__init__()
        self.polls_before_done = polls_before_done
        self.image_size = image_size
        self.prompt_error: dict | None = None
        self.execution_error: str | None = None
        self.workflows: list[dict] = []
        self.client_ids: list[Any] = []
        self.deleted: list[str] = []
        self.files: dict[str, bytes] = {}
        self.uploads: list[tuple[str, bytes]] = []  # (name, bytes) of POST /upload/image
        self._jobs: dict[str, dict] = {}

    @property
    def base_url(self) -> str:
        return self.root_url

    def handle(self, handler: BaseHTTPRequestHandler, rec: RecordedRequest) -> None:
        path = rec.path
        if rec.method == "POST" and path == "/prompt":
            return self._prompt(handler, rec)
        if rec.method == "GET" and path.startswith("/history/"):
            return self._history(handler, path[len("/history/"):])
        if rec.method == "GET" and path == "/view":
            name = rec.query.get("filename", "")
            with self.lock:
                data = self.files.get(name)
            if data is None or rec.query.get("type", "") not in ("output", "temp", "input"):
                return self.send_bytes(handler, 404, b"404: Not Found", "text/plain")
            return self.send_bytes(handler, 200, data, "image/png")
        if rec.method == "POST" and path == "/upload/image":
            return self._upload(handler, rec)
        if rec.method == "POST" and path == "/queue":
            with self.lock:
                self.deleted.extend((rec.body or {}).get("delete") or [])
            return self.send_json(handler, 200, {})
        return self.send_bytes(handler, 404, b"404: Not Found", "text/plain")

    def _upload(self, handler: BaseHTTPRequestHandler, rec: RecordedRequest) -> None:
        """``POST /upload/image``: the multipart ``image`` field is stored under its file name
        (ComfyUI's input folder); ``{"name", "subfolder", "type"}`` as the server answers."""
        from email.parser import BytesParser
        ctype = rec.headers.get("content-type", "")
        msg = BytesParser().parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + rec.raw)
        for part in msg.walk():
            if part.get_param("name", header="content-disposition") == "image":
                name = part.get_filename() or "image.png"
                with self.lock:
                    self.uploads.append((name, part.get_payload(decode=True)))
                    self.files[name] = part.get_payload(decode=True)
                return self.send_json(handler, 200, {"name": name, "subfolder": "",
                                                     "type": "input"})
        return self.send_bytes(handler, 400, b"no image field", "text/plain")

    def _prompt(self, handler: BaseHTTPRequestHandler, rec: RecordedRequest) -> None:
        body = rec.body if isinstance(rec.body, dict) else {}
        workflow = body.get("prompt")
        if self.prompt_error is not None:
            return self.send_json(handler, 400, {"error": self.prompt_error, "node_errors": {}})
        if not isinstance(workflow, dict) or not all(
                isinstance(n, dict) and "class_type" in n for n in workflow.values()):
            return self.send_json(handler, 400, {"error": {
                "type": "invalid_prompt", "message": "Cannot execute because the prompt is not "
                "a valid API-format workflow.", "details": "", "extra_info": {}},
                "node_errors": {}})
        prompt_id = str(uuid.uuid4())
        with self.lock:
            self.workflows.append(workflow)
            self.client_ids.append(body.get("client_id"))
            number = len(self.workflows)
            self._jobs[prompt_id] = {"workflow": workflow, "number": number, "polls": 0}
        self.send_json(handler, 200, {"prompt_id": prompt_id, "number": number,
                                      "node_errors": {}})

    def _history(self, handler: BaseHTTPRequestHandler, prompt_id: str) -> None:
        with self.lock:
            job = self._jobs.get(prompt_id)
            if job is None:
                return self.send_json(handler, 200, {})
            job["polls"] += 1
            if self.polls_before_done is None or job["polls"] <= self.polls_before_done:
                return self.send_json(handler, 200, {})
            workflow = job["workflow"]
            save_node = next((nid for nid, n in workflow.items()
                              if n.get("class_type") == "SaveImage"), "9")
            entry: dict[str, Any] = {
                "prompt": [job["number"], prompt_id, workflow, {"client_id": None},
                           [save_node]],
                "meta": {save_node: {"node_id": save_node, "display_node": save_node}},
            }
            if self.execution_error is not None:
                entry["outputs"] = {}
                entry["status"] = {"status_str": "error", "completed": False, "messages": [
                    ["execution_start", {"prompt_id": prompt_id}],
                    ["execution_error", {"prompt_id": prompt_id, "node_id": "3",
                                         "node_type": "KSampler",
                                         "exception_message": self.execution_error,
                                         "exception_type": "RuntimeError"}]]}
            else:
                name = f"ComfyUI_{job['number']:05d}_.png"
                self.files.setdefault(name, png_bytes(self.image_size, prompt_id))
                entry["outputs"] = {save_node: {"images": [
                    {"filename": name, "subfolder": "", "type": "output"}]}}
                entry["status"] = {"status_str": "success", "completed": True, "messages": [
                    ["execution_start", {"prompt_id": prompt_id}],
                    ["execution_success", {"prompt_id": prompt_id}]]}
        self.send_json(handler, 200, {prompt_id: entry})
