"""Layer **services**: the drivers — requests, results and protocols, the backend registry, the
response cache and every backend, each converting its SDK's exceptions into ours at the
boundary. Knows nothing of templates or stories; imports core only.

Built-in backends register themselves in :mod:`cloops.services.registry` the same way a
third-party backend would.
"""
