"""Services behind small protocols: LLM (``complete``), image (``generate_image``).

Built-in backends register themselves in :mod:`cloops.services.registry` the same way a
third-party backend would.
"""
