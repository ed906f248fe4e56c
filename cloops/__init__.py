"""cloops: turn a backlog of story ideas into finished content bundles, as a doit build.

The package is cut in layers; each imports only the layers below it (checked by import-linter,
``pyproject.toml`` ``[tool.importlinter]``, in ``tests/test_layers.py``):

- ``steer``     steering by hand: addressing targets, history, takes, locks, status, spend
                reports, and the doit commands for them
- ``run``       one doit run: story selection, task actions, the service hub (response cache,
                limits, retries, ledger), dispatch order, the reporter, the ``dodo.py`` entry
- ``graph``     steps and their kinds (which own their run), the artifact graph of a template,
                task creation, targets, locks, completion records, story seals
- ``data``      the project, backlogs, templates, their validated config, prompts, schemas
- ``services``  the drivers: requests, results, the backend registry, the response cache and
                the backends, each converting its SDK's errors into ours
- ``core``      errors, atomic file IO and hashes, the console

``cloops.steps`` is the face template authors import in ``workflow.py``; no layer imports it.
"""

__version__ = "0.1.0"
