"""Layer **core**: what every layer may use — the error hierarchy, atomic file IO and hashes,
the console. Imports nothing of cloops."""
