"""Image backend on a ComfyUI server's HTTP API (a local or self-hosted GPU, no per-image fee).

Layer: **services**.

One :meth:`ComfyUIBackend.generate_image` call:

1. loads the API-format workflow (``{node_id: {"class_type", "inputs", "_meta": {"title"}}}``,
   exported with ComfyUI's "Save (API Format)") and injects the request: the prompt into
   ``inputs.text`` of the node titled ``comfyui.prompt_node`` (default ``"Positive Prompt"``;
   fallback: the first ``CLIPTextEncode`` node), ``params.width``/``params.height`` into
   ``Empty*LatentImage`` nodes, ``params.seed`` into ``KSampler``-class nodes;
2. ``POST {url}/prompt {"prompt": workflow, "client_id": uuid}`` -> ``{"prompt_id"}``;
3. polls ``GET {url}/history/{prompt_id}`` (``{}`` until the job is done) every
   ``poll_interval_s`` until ``request.timeout_s``;
4. fetches the first output image (``type == "output"`` preferred) with ``GET
   {url}/view?filename=&subfolder=&type=`` and converts it to JPEG.

**Reference images.** A workflow takes reference images (a character's sheet) in image-loading
nodes titled ``Reference 1``, ``Reference 2``, ... (``comfyui.reference_node``, case
insensitive): each reference is uploaded once per content (``POST {url}/upload/image``, a
multipart ``image`` field, as ComfyUI's own front end does; named by its sha256 so a second
upload of the same picture overwrites it in place) and its name set as the node's ``image``.
Extra references, beyond the nodes the workflow has, are not used: the result says how many
were (``references_used``), and the run says so.

Config (``generation.comfyui``): ``url`` (else ``COMFYUI_URL``, else http://127.0.0.1:8188),
``workflow`` (required; relative to ``template_dir`` if given, else the working directory),
``prompt_node``, ``reference_node``, ``poll_interval_s``. Other ``params`` are ignored: the workflow holds them.

API facts from ComfyUI's ``server.py`` (routes ``/prompt``, ``/history/{prompt_id}``, ``/view``,
``/queue``): a rejected workflow is HTTP 400 ``{"error": {"message", ...}, "node_errors"}``; a
failed run has ``status.status_str == "error"`` with an ``execution_error`` message.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from ..core.errors import InputError, PermanentServiceError, ServiceError, TransientServiceError
from .imaging import to_jpeg
from .base import ImageRequest, ImageResult
from .registry import BackendSpec, register
from .wire import tls_context

URL_ENV = "COMFYUI_URL"
DEFAULT_URL = "http://127.0.0.1:8188"
DEFAULT_PROMPT_NODE = "Positive Prompt"
DEFAULT_REFERENCE_NODE = "Reference"  # reference image nodes: "Reference 1", "Reference 2", ...
DEFAULT_POLL_INTERVAL_S = 0.5
_LATENT_CLASS = re.compile(r"^Empty\w*LatentImage$")  # EmptyLatentImage, EmptySD3LatentImage
_SAMPLER_CLASS = re.compile(r"^KSampler\w*$")  # KSampler, KSamplerAdvanced


def load_workflow(path: Path, *, shown: str | None = None) -> dict[str, dict]:
    """Read an API-format workflow file: ``{node_id: {"class_type", "inputs", ...}}``.

    Raises:
        InputError: missing file, invalid JSON, or a UI-format export (``nodes``/``links``).
    """
    shown = shown or str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("does not exist.", file=shown, field="generation.comfyui.workflow",
                         fix="point it at a workflow exported with \"Save (API Format)\"."
                         ) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"is not valid JSON: {exc.msg} at line {exc.lineno}.", file=shown,
                         fix="re-export the workflow with \"Save (API Format)\".") from None
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise InputError("is a UI-format workflow; the API needs the API format.", file=shown,
                         fix="in ComfyUI enable dev mode and use \"Save (API Format)\".")
    if not isinstance(data, dict) or not data or not all(
            isinstance(n, dict) and "class_type" in n for n in data.values()):
        raise InputError("is not an API-format workflow ({node_id: {class_type, inputs}}).",
                         file=shown, fix="re-export it with \"Save (API Format)\".")
    return data


def reference_nodes(workflow: dict[str, dict], title: str = DEFAULT_REFERENCE_NODE) -> list[str]:
    """The ids of the workflow's reference image nodes, in order: those titled ``<title> 1``,
    ``<title> 2``, ... (case insensitive), numbered from 1 without gaps."""
    pattern = re.compile(rf"^\s*{re.escape(title)}\s*(\d+)\s*$", re.I)
    numbered = {}
    for nid, node in workflow.items():
        m = pattern.match(str((node.get("_meta") or {}).get("title", "")))
        if m:
            numbered[int(m.group(1))] = nid
    out = []
    while len(out) + 1 in numbered:
        out.append(numbered[len(out) + 1])
    return out


def inject(workflow: dict[str, dict], request: ImageRequest, *,
           prompt_node: str = DEFAULT_PROMPT_NODE,
           images: dict[str, str] | None = None) -> dict[str, dict]:
    """Return a copy of ``workflow`` with the request's prompt, size and seed filled in, and
    ``images`` (``{node id: uploaded image name}``) as those nodes' ``image`` input.

    The prompt goes to ``inputs.text`` of the node whose ``_meta.title`` is ``prompt_node``,
    else of the first ``CLIPTextEncode`` node; ``params["width"|"height"]`` (px) to every
    ``Empty*LatentImage`` node; ``params["seed"]`` to every ``KSampler*`` node (``seed``, or
    ``noise_seed`` for ``KSamplerAdvanced``).

    Raises:
        PermanentServiceError: no node can take the prompt.
    """
    wf = copy.deepcopy(workflow)
    target = next((n for n in wf.values()
                   if (n.get("_meta") or {}).get("title") == prompt_node), None)
    if target is None:
        target = next((n for n in wf.values() if n.get("class_type") == "CLIPTextEncode"), None)
    if target is None:
        raise PermanentServiceError(
            f"the ComfyUI workflow has no node titled {prompt_node!r} and no CLIPTextEncode "
            "node to take the prompt. Fix: title the positive prompt node "
            f"{prompt_node!r} or set generation.comfyui.prompt_node.",
            service="image", backend="comfyui")
    target.setdefault("inputs", {})["text"] = request.prompt
    params = request.params or {}
    for node in wf.values():
        inputs = node.setdefault("inputs", {})
        cls = str(node.get("class_type", ""))
        if _LATENT_CLASS.match(cls):
            for key in ("width", "height"):
                if params.get(key) is not None:
                    inputs[key] = int(params[key])
        if _SAMPLER_CLASS.match(cls) and params.get("seed") is not None:
            key = "noise_seed" if "noise_seed" in inputs else "seed"
            inputs[key] = int(params["seed"])
    for nid, name in (images or {}).items():
        wf[nid].setdefault("inputs", {})["image"] = name
    return wf


class ComfyUIBackend:
    """Generate images by running a ComfyUI workflow over its HTTP API.

    Attributes:
        name: ``"comfyui"``.
        offline: False (it needs a running ComfyUI server).
        uses_annotations: False.
        url: the server root, e.g. ``http://127.0.0.1:8188``.
        workflow: the API-format workflow template (never mutated).
        prompt_node: the ``_meta.title`` of the node that takes the prompt.
        poll_interval_s: seconds between ``/history`` polls.
    """

    name = "comfyui"
    offline = False
    uses_annotations = False

    def __init__(self, url: str, workflow: dict[str, dict], *,
                 prompt_node: str = DEFAULT_PROMPT_NODE, http_timeout_s: float = 30.0,
                 poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
                 reference_node: str = DEFAULT_REFERENCE_NODE):
        import httpx  # lazily: importing this module must stay cheap

        self._httpx = httpx
        self.url = url.rstrip("/")
        self.workflow = workflow
        self.prompt_node = prompt_node
        self.reference_node = reference_node
        self._uploaded: dict[str, str] = {}  # reference sha256 -> its name on the server
        self.poll_interval_s = max(0.0, float(poll_interval_s))
        self.client_id = uuid.uuid4().hex
        self._http = httpx.Client(base_url=self.url, verify=tls_context(),
                                  timeout=httpx.Timeout(http_timeout_s,
                                                        connect=min(10.0, http_timeout_s)))

    def generate_image(self, request: ImageRequest) -> ImageResult:
        """Run the workflow for ``request`` and return its first output image as JPEG.

        Raises:
            TransientServiceError: connection error, HTTP 5xx/429, or no output within
                ``request.timeout_s`` (the job is then removed from the queue).
            PermanentServiceError: the server rejected the workflow (400) or the run failed.
        """
        deadline = time.monotonic() + request.timeout_s
        slots = reference_nodes(self.workflow, self.reference_node)
        images = {nid: self._upload(ref) for nid, ref in zip(slots, request.references)}
        workflow = inject(self.workflow, request, prompt_node=self.prompt_node, images=images)
        body = self._json(self._call("POST", "/prompt", "submitting the workflow",
                                     json={"prompt": workflow, "client_id": self.client_id}),
                          "POST /prompt")
        prompt_id = body.get("prompt_id")
        if not prompt_id:
            raise PermanentServiceError(
                f"ComfyUI at {self.url} accepted the workflow but returned no prompt_id "
                f"({json.dumps(body)[:200]}).", service="image", backend="comfyui")
        entry = self._wait(prompt_id, deadline, request)
        image = _first_image(entry)
        if image is None:
            raise PermanentServiceError(
                f"ComfyUI job {prompt_id} finished without an output image. Fix: end the "
                "workflow with a SaveImage node.", service="image", backend="comfyui")
        params = {"filename": image.get("filename", ""), "subfolder": image.get("subfolder", ""),
                  "type": image.get("type", "output")}
        data = self._call("GET", "/view", f"fetching {params['filename']}", params=params).content
        try:
            jpeg, width_px, height_px = to_jpeg(data, source=f"ComfyUI {self.url}")
        except ServiceError as exc:
            exc.backend = exc.backend or "comfyui"
            raise
        return ImageResult(jpeg=jpeg, width_px=width_px, height_px=height_px, images_billed=1,
                           references_used=len(images))

    def _upload(self, ref) -> str:
        """Upload a reference image once per content; return the name ComfyUI gave it."""
        name = self._uploaded.get(ref.sha256)
        if name is None:
            body = self._call("POST", "/upload/image", f"uploading the reference {ref.label!r}",
                              files={"image": (f"cloops-{ref.sha256[:16]}.jpg", ref.jpeg,
                                               "image/jpeg")},
                              data={"overwrite": "true", "type": "input"})
            body = self._json(body, "POST /upload/image")
            name = body.get("name") or f"cloops-{ref.sha256[:16]}.jpg"
            if body.get("subfolder"):
                name = f"{body['subfolder']}/{name}"
            self._uploaded[ref.sha256] = name
        return name

    def _wait(self, prompt_id: str, deadline: float, request: ImageRequest) -> dict:
        """Poll ``/history/{prompt_id}`` until the job has outputs or failed."""
        while True:
            history = self._json(self._call("GET", f"/history/{prompt_id}", "polling the job"),
                                 f"GET /history/{prompt_id}")
            entry = history.get(prompt_id) if isinstance(history, dict) else None
            if entry:
                status = entry.get("status") or {}
                if status.get("status_str") == "error":
                    raise PermanentServiceError(
                        f"ComfyUI job {prompt_id} failed: {_execution_error(status)}. Fix: "
                        "check the workflow in ComfyUI.", service="image", backend="comfyui")
                if entry.get("outputs") or status.get("completed"):
                    return entry
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._delete_from_queue(prompt_id)
                raise TransientServiceError(
                    f"ComfyUI job {prompt_id} at {self.url} had no output after "
                    f"{request.timeout_s:g} s; removed it from the queue. Fix: retry, or raise "
                    "generation.timeoutS for a slow GPU.", service="image", backend="comfyui")
            time.sleep(min(self.poll_interval_s, remaining))

    def _delete_from_queue(self, prompt_id: str) -> None:
        try:
            self._http.post("/queue", json={"delete": [prompt_id]})
        except Exception:  # noqa: BLE001 - best effort
            pass

    def _call(self, method: str, path: str, doing: str, **kwargs: Any) -> Any:
        """Send one request; map httpx errors and HTTP status to :mod:`cloops.core.errors`."""
        httpx = self._httpx
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise TransientServiceError(
                f"ComfyUI at {self.url} timed out while {doing} ({type(exc).__name__}).",
                service="image", backend="comfyui") from exc
        except httpx.TransportError as exc:
            raise TransientServiceError(
                f"cannot reach ComfyUI at {self.url} while {doing}: {type(exc).__name__}: "
                f"{exc}. Fix: start ComfyUI or set generation.comfyui.url / {URL_ENV}.",
                service="image", backend="comfyui") from exc
        status = response.status_code
        if status < 400:
            return response
        detail = _error_detail(response)
        if status in (408, 429) or status >= 500:
            raise TransientServiceError(
                f"ComfyUI at {self.url} answered HTTP {status} while {doing}: {detail}.",
                service="image", backend="comfyui", status_code=status)
        raise PermanentServiceError(
            f"ComfyUI at {self.url} answered HTTP {status} while {doing}: {detail}. Fix: check "
            "the workflow file and generation.comfyui.", service="image", backend="comfyui",
            status_code=status)

    def _json(self, response: Any, endpoint: str) -> dict:
        """The JSON object of a 2xx answer of ``endpoint`` (``"POST /prompt"``).

        Raises:
            PermanentServiceError: the body is not a JSON object (another server answers at
                that URL, or a proxy's page): names the endpoint, the content type and the
                fix; a retry gets the same answer.
        """
        try:
            data = response.json()
        except ValueError:
            kind = (response.headers.get("content-type") or "no content type").split(";")[0]
            data, problem = None, f"its body is {kind}, not JSON"
        else:
            problem = f"its body is a JSON {type(data).__name__}, not an object"
        if isinstance(data, dict):
            return data
        raise PermanentServiceError(
            f"the answer of {self.url} to {endpoint} is not what ComfyUI's API documents: "
            f"{problem}. Fix: the server at generation.comfyui.url / {URL_ENV} "
            f"({self.url}) does not speak ComfyUI's API: point it at ComfyUI's own port "
            "(8188 by default). Retrying cannot help.", service="image", backend="comfyui",
            status_code=response.status_code)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()


def _first_image(entry: dict) -> dict | None:
    images = [img for node in (entry.get("outputs") or {}).values()
              for img in (node.get("images") or []) if isinstance(img, dict)]
    saved = [img for img in images if img.get("type") == "output"]
    return (saved or images or [None])[0]


def _execution_error(status: dict) -> str:
    for message in status.get("messages") or []:
        if isinstance(message, list) and len(message) == 2 and message[0] == "execution_error":
            info = message[1] or {}
            return (f"{info.get('node_type', '?')} node {info.get('node_id', '?')}: "
                    f"{info.get('exception_message', 'no message')}".strip())
    return "status error, no message"


def _error_detail(response: Any) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        text = err.get("message") or err.get("type") or "error"
        if err.get("details"):
            text += f" ({err['details']})"
        if data.get("node_errors"):
            text += f"; node_errors: {json.dumps(data['node_errors'])[:300]}"
        return text
    return json.dumps(data)[:200]


def create_backend(section: Any, env: Mapping[str, str]) -> ComfyUIBackend:
    """Registry factory: build from ``generation.comfyui`` (a dict) and the environment.

    Raises:
        InputError: ``generation.comfyui.workflow`` is missing or is not an API-format workflow.
    """
    conf = dict(section.comfyui or {})
    workflow_name = conf.get("workflow")
    if not workflow_name:
        raise InputError("is required by the comfyui image backend.",
                         field="generation.comfyui.workflow",
                         fix="set it to a workflow JSON exported with \"Save (API Format)\".")
    base = Path(conf["template_dir"]) if conf.get("template_dir") else Path(os.getcwd())
    path = Path(workflow_name)
    path = path if path.is_absolute() else base / path
    url = conf.get("url") or env.get(URL_ENV) or DEFAULT_URL
    return ComfyUIBackend(
        str(url), load_workflow(path, shown=str(workflow_name)),
        prompt_node=str(conf.get("prompt_node") or DEFAULT_PROMPT_NODE),
        http_timeout_s=min(60.0, float(section.timeout_s)),
        poll_interval_s=float(conf.get("poll_interval_s", DEFAULT_POLL_INTERVAL_S)),
        reference_node=str(conf.get("reference_node") or DEFAULT_REFERENCE_NODE))


SPEC = register(BackendSpec(name="comfyui", service="image", offline=False, imports=("httpx",), key_env=(URL_ENV,),
                            auto_rank=20, factory=create_backend,
                            describe="ComfyUI HTTP API"))
