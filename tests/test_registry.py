"""The backend registry: built-ins are chosen without importing their modules, and the static
table the choice uses agrees with what each module registers."""

from __future__ import annotations

import importlib
import subprocess
import sys

from cloops.services import registry


def test_builtin_table_matches_registered_specs():
    for name, (service, module, offline, key_env, rank) in registry.BUILTINS.items():
        importlib.import_module(module)
        spec = registry.backends(service)[name].full()
        assert (spec.service, spec.offline, spec.key_env, spec.auto_rank) == (
            service, offline, key_env, rank), name
        assert not spec.module, f"{name}: the module did not register its full spec"


def test_auto_picks_real_backend_when_key_is_set_else_offline():
    r = registry.resolve("llm", "auto", {})
    assert r.spec.name == "draft" and "OFFLINE" in r.reason
    r = registry.resolve("llm", "auto", {"OPENAI_API_KEY": "sk-x"})
    assert r.spec.name == "openai" and "OPENAI_API_KEY" in r.reason
    r = registry.resolve("image", "auto", {"REPLICATE_API_TOKEN": "r8", "COMFYUI_URL": "http://x"})
    assert r.spec.name == "replicate"
    r = registry.resolve("voice", "auto", {"ELEVENLABS_API_KEY": "k"})
    assert r.spec.name == "elevenlabs"


def test_choosing_backends_imports_no_sdk_module():
    code = ("import sys; from cloops.services import registry;"
            "[registry.resolve(s, 'auto', {}) for s in ('llm', 'image', 'voice')];"
            "bad = [m for m in ('openai', 'replicate', 'PIL', 'elevenlabs', 'piper', "
            "'cloops.services.replicate_backend') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_loading_the_step_kinds_imports_no_image_or_media_library():
    """What every doit start imports (the step kinds, the engine, the run layer) leaves the
    heavy libraries to the tasks that use them: Pillow alone was ~10 ms of each start."""
    code = ("import sys; import cloops.graph.kinds, cloops.graph.engine, cloops.run.dodo;"
            "bad = [m for m in ('PIL', 'numpy', 'cv2', 'openai', 'replicate', 'httpx', "
            "'jsonschema', 'textstat', 'fsspec') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
