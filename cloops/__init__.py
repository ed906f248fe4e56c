"""cloops: turn a backlog of story ideas into finished content bundles, as a doit build.

Package map (one module per concept):

- ``errors``     the ``CloopsError`` hierarchy (user errors print without a traceback)
- ``fileio``     atomic writes and content hashes
- ``config``     template ``config.json`` models (pydantic) and dotted-path lookup
- ``prompts``    ``{a.b}`` variable discovery and injection into system prompts
- ``steps``      the declarations a template's ``workflow.py`` uses (LLMStep, ImageStep, ...)
- ``template``   template discovery and loading
- ``backlog``    the backlog datasource (status writes are atomic and locked)
- ``services``   LLM and image backends behind small protocols, the response cache
- ``engine``     turns a template's steps into doit tasks; the task actions
- ``reporter``   rich progress and the end-of-run summary
- ``ledger``     every call recorded in SQLite under ``build/``
"""

__version__ = "0.1.0"
