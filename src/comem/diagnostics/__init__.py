"""Diagnostics: ``comem bench`` and ``comem doctor`` drive the engine from above, like the CLI
(docs/architecture.md). ``step_paths`` runs one step along each path a mode can take, for comparing.
"""
