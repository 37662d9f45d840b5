"""The training loop only (docs/architecture.md): the trainer, the step engine, the modes and their one
dispatch table (``modes.MODE_STEPS``), checkpoint files, EMA, precision, distributed training, stopping,
the run directory, provenance, loggers, loaders and evaluation. It names no task: tasks
reach it through :mod:`comem.tasks.base`.
"""
