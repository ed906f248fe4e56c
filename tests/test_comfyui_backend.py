"""The ComfyUI image backend, over real HTTP against a loopback fake ComfyUI."""

from __future__ import annotations

import copy
import io
import json

import pytest
from PIL import Image

from cloops.data.config import GenerationConfig
from cloops.core.errors import InputError, PermanentServiceError, TransientServiceError
from cloops.services import registry
from cloops.services.base import ImageBackend, ImageRequest
from cloops.services.comfyui_backend import ComfyUIBackend, create_backend, inject

try:  # `tests` is a package or a rootdir namespace, depending on how pytest is run
    from tests.fakes.comfyui_server import FakeComfyUI
except ImportError:  # pragma: no cover
    from fakes.comfyui_server import FakeComfyUI

PROMPT = "Noah leads two giraffes up the ramp into the ark, warm evening light"

# An API-format SD 1.5 workflow ("Save (API Format)"). The negative prompt node comes first, so
# "first CLIPTextEncode" and "the node titled Positive Prompt" are different nodes.
WORKFLOW = {
    "3": {"class_type": "KSampler", "_meta": {"title": "KSampler"},
          "inputs": {"seed": 1, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                     "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                     "positive": ["7", 0], "negative": ["6", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "_meta": {"title": "Load Checkpoint"},
          "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "_meta": {"title": "Empty Latent Image"},
          "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "_meta": {"title": "Negative Prompt"},
          "inputs": {"text": "blurry, watermark", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "_meta": {"title": "Positive Prompt"},
          "inputs": {"text": "PLACEHOLDER", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "_meta": {"title": "VAE Decode"},
          "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "_meta": {"title": "Save Image"},
          "inputs": {"filename_prefix": "cloops", "images": ["8", 0]}},
}


def write_workflow(tmp_path, workflow=WORKFLOW, name="workflow-api.json"):
    (tmp_path / name).write_text(json.dumps(workflow), encoding="utf-8")
    return name


def make_backend(srv, tmp_path, **comfyui) -> ComfyUIBackend:
    conf = {"url": srv.base_url, "workflow": write_workflow(tmp_path),
            "template_dir": str(tmp_path), "poll_interval_s": 0.01, **comfyui}
    section = GenerationConfig.model_validate(
        {"backend": "comfyui", "model": "sd15", "timeoutS": 5, "comfyui": conf})
    return create_backend(section, {})


def request(**kw) -> ImageRequest:
    return ImageRequest(**{"prompt": PROMPT, "model": "sd15", "timeout_s": 5.0, **kw})


def test_prompt_size_and_seed_are_injected_and_the_image_is_a_jpeg(tmp_path):
    with FakeComfyUI(polls_before_done=1) as srv:
        backend = make_backend(srv, tmp_path)
        result = backend.generate_image(request(params={"width": 768, "height": 1024,
                                                        "seed": 42}))
        [sent] = srv.workflows
        history = srv.requests_to("/history/", "GET")
        [view] = srv.requests_to("/view", "GET")
        [submit] = srv.requests_to("/prompt", "POST")
    assert sent["7"]["inputs"]["text"] == PROMPT
    assert sent["6"]["inputs"]["text"] == "blurry, watermark"  # the negative prompt is kept
    assert sent["5"]["inputs"] == {"width": 768, "height": 1024, "batch_size": 1}
    assert sent["3"]["inputs"]["seed"] == 42
    untouched = {k: v for k, v in sent.items() if k not in ("3", "5", "7")}
    assert untouched == {k: v for k, v in WORKFLOW.items() if k not in ("3", "5", "7")}
    assert submit.body["client_id"] == backend.client_id
    assert len(history) == 2  # one empty answer, then the outputs
    assert view.query == {"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}
    img = Image.open(io.BytesIO(result.jpeg))
    assert img.format == "JPEG"
    assert img.size == (result.width_px, result.height_px) == (40, 30)
    assert result.images_billed == 1
    assert backend.workflow == WORKFLOW  # the template is never mutated


def test_without_params_the_workflow_keeps_its_size_and_seed(tmp_path):
    with FakeComfyUI(polls_before_done=0) as srv:
        make_backend(srv, tmp_path).generate_image(request())
        [sent] = srv.workflows
    assert sent["5"]["inputs"]["width"] == 512 and sent["5"]["inputs"]["height"] == 512
    assert sent["3"]["inputs"]["seed"] == 1


def test_custom_prompt_node_title(tmp_path):
    workflow = copy.deepcopy(WORKFLOW)
    workflow["7"]["_meta"]["title"] = "Scene"
    with FakeComfyUI() as srv:
        conf = {"url": srv.base_url, "template_dir": str(tmp_path), "poll_interval_s": 0.01,
                "workflow": write_workflow(tmp_path, workflow), "prompt_node": "Scene"}
        section = GenerationConfig.model_validate({"model": "sd15", "comfyui": conf})
        create_backend(section, {}).generate_image(request())
        [sent] = srv.workflows
    assert sent["7"]["inputs"]["text"] == PROMPT
    assert sent["6"]["inputs"]["text"] == "blurry, watermark"


def test_falls_back_to_the_first_clip_text_encode_node():
    workflow = copy.deepcopy(WORKFLOW)
    for node in workflow.values():
        node.pop("_meta")
    sent = inject(workflow, request())
    assert sent["6"]["inputs"]["text"] == PROMPT
    assert sent["7"]["inputs"]["text"] == "PLACEHOLDER"


def test_ksampler_advanced_gets_noise_seed():
    workflow = copy.deepcopy(WORKFLOW)
    workflow["3"] = {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 5, "steps": 20}}
    sent = inject(workflow, request(params={"seed": 99}))
    assert sent["3"]["inputs"] == {"noise_seed": 99, "steps": 20}


def test_no_prompt_node_is_permanent():
    workflow = {"9": {"class_type": "SaveImage", "inputs": {}}}
    with pytest.raises(PermanentServiceError, match="Positive Prompt"):
        inject(workflow, request())


def test_url_from_env_when_not_configured(tmp_path):
    with FakeComfyUI(polls_before_done=0) as srv:
        conf = {"workflow": str(tmp_path / write_workflow(tmp_path)), "poll_interval_s": 0.01}
        section = GenerationConfig.model_validate({"model": "sd15", "comfyui": conf})
        backend = create_backend(section, {"COMFYUI_URL": srv.base_url + "/"})
        backend.generate_image(request())
        assert len(srv.workflows) == 1
        assert backend.url == srv.base_url


def test_execution_error_is_permanent_with_the_message(tmp_path):
    with FakeComfyUI() as srv:
        srv.execution_error = "CUDA out of memory. Tried to allocate 2.00 GiB"
        with pytest.raises(PermanentServiceError, match="CUDA out of memory") as info:
            make_backend(srv, tmp_path).generate_image(request())
    assert not isinstance(info.value, TransientServiceError)


def test_rejected_workflow_is_permanent_with_the_error(tmp_path):
    with FakeComfyUI() as srv:
        srv.prompt_error = {"type": "prompt_outputs_failed_validation",
                            "message": "Prompt outputs failed validation", "details": "",
                            "extra_info": {}}
        with pytest.raises(PermanentServiceError, match="failed validation") as info:
            make_backend(srv, tmp_path).generate_image(request())
    assert info.value.status_code == 400


def test_no_output_in_time_is_transient_and_dequeued(tmp_path):
    with FakeComfyUI(polls_before_done=None) as srv:
        with pytest.raises(TransientServiceError, match="no output after"):
            make_backend(srv, tmp_path).generate_image(request(timeout_s=0.2))
        [submit] = srv.requests_to("/prompt", "POST")
        [history] = {r.path for r in srv.requests_to("/history/")}
        assert srv.deleted == [history.rsplit("/", 1)[1]]
        assert len(srv.requests_to("/history/")) >= 2


def test_unreachable_server_is_transient(tmp_path):
    with FakeComfyUI() as srv:
        backend = make_backend(srv, tmp_path)
    with pytest.raises(TransientServiceError, match="COMFYUI_URL"):
        backend.generate_image(request())


def test_missing_or_ui_format_workflow_is_input_error(tmp_path):
    section = GenerationConfig.model_validate({"model": "sd15", "comfyui": {}})
    with pytest.raises(InputError, match="generation.comfyui.workflow"):
        create_backend(section, {})
    name = write_workflow(tmp_path, {"nodes": [], "links": []}, "ui.json")
    section = GenerationConfig.model_validate(
        {"model": "sd15", "comfyui": {"workflow": name, "template_dir": str(tmp_path)}})
    with pytest.raises(InputError, match="API Format"):
        create_backend(section, {})


def test_registered_and_picked_by_auto_when_the_url_is_set(tmp_path):
    spec = registry.backends("image")["comfyui"]
    assert (spec.offline, spec.key_env, spec.auto_rank) == (False, ("COMFYUI_URL",), 20)
    assert spec.factory is create_backend
    assert registry.resolve("image", "auto", {"COMFYUI_URL": "http://gpu:8188"}).spec.name \
        == "comfyui"
    section = GenerationConfig.model_validate(
        {"model": "sd15", "comfyui": {"workflow": write_workflow(tmp_path),
                                      "template_dir": str(tmp_path)}})
    backend = spec.factory(section, {})
    assert isinstance(backend, ImageBackend)
    assert (backend.name, backend.offline, backend.uses_annotations) == ("comfyui", False, False)
    assert backend.url == "http://127.0.0.1:8188"


# -- reference images -----------------------------------------------------------------------

def _sheet(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 16), colour).save(buf, "JPEG")
    return buf.getvalue()


def test_references_fill_the_nodes_titled_reference_n_and_are_uploaded_once(tmp_path):
    from cloops.services.base import Reference
    wf = copy.deepcopy(WORKFLOW)
    wf["20"] = {"class_type": "LoadImage", "_meta": {"title": "Reference 1"},
                "inputs": {"image": "placeholder.png"}}
    wf["21"] = {"class_type": "LoadImage", "_meta": {"title": "reference 2"},
                "inputs": {"image": "placeholder.png"}}
    refs = tuple(Reference(label=f"{n}'s reference sheet", jpeg=_sheet(c))
                 for n, c in (("Noah", (200, 0, 0)), ("Shem", (0, 200, 0)), ("Ham", (0, 0, 200))))
    with FakeComfyUI() as srv:
        name = write_workflow(tmp_path, wf, "refs.json")
        backend = make_backend(srv, tmp_path, workflow=name)
        first = backend.generate_image(request(references=refs))
        second = backend.generate_image(request(references=refs[:2]))
    sent = srv.workflows[0]
    assert [n for n, _ in srv.uploads] == [f"cloops-{r.sha256[:16]}.jpg" for r in refs[:2]]
    assert [b for _, b in srv.uploads] == [r.jpeg for r in refs[:2]]  # once each, in order
    assert sent["20"]["inputs"]["image"] == srv.uploads[0][0]
    assert sent["21"]["inputs"]["image"] == srv.uploads[1][0]
    assert first.references_used == 2 and second.references_used == 2  # two nodes: Ham left out
    assert srv.workflows[1]["21"]["inputs"]["image"] == srv.uploads[1][0]


def test_a_workflow_without_reference_nodes_uses_none_and_says_so(tmp_path):
    from cloops.services.base import Reference
    ref = Reference(label="Noah's reference sheet", jpeg=_sheet((9, 9, 9)))
    with FakeComfyUI() as srv:
        result = make_backend(srv, tmp_path).generate_image(request(references=(ref,)))
    assert result.references_used == 0 and srv.uploads == []


def test_an_answer_that_is_not_comfyuis_is_permanent_naming_the_endpoint(tmp_path):
    # issue 24, item 4: another server at the URL (a web page on that port) is not retried
    class NotComfy(FakeComfyUI):
        def handle(self, handler, rec):
            if rec.method == "POST" and rec.path == "/prompt":
                return self.send_bytes(handler, 200, b"<html>welcome</html>", "text/html")
            return super().handle(handler, rec)

    with NotComfy() as srv:
        with pytest.raises(PermanentServiceError) as info:
            make_backend(srv, tmp_path).generate_image(request())
        prompts = [r for r in srv.requests if r.path == "/prompt"]
    message = str(info.value)
    assert not isinstance(info.value, TransientServiceError) and len(prompts) == 1
    assert "to POST /prompt is not what ComfyUI's API documents: its body is text/html" in message
    assert "does not speak ComfyUI's API" in message
