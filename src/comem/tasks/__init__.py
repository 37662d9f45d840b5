"""What differs between the things comem trains: each task supplies its data, model, the loss of one
batch in each training mode, its evaluation and reports (:class:`comem.tasks.base.Task`); the one
loop in :mod:`comem.engine.trainer` runs any of them (docs/architecture.md).

- :mod:`comem.tasks.classification`: video labels (single- or multi-label), multi-view testing.
- :mod:`comem.tasks.ava`: AVA spatio-temporal action detection (person boxes, official frame mAP).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from comem.tasks.base import Task


def task_class(name: str) -> type[Task]:
    """The task ``TrainConfig.task`` names (``classify`` or ``ava``; a checkpoint's:
    ``comem.checkpoint_state.stored_task``), imported on use: the one place a task name becomes a
    task, so ``comem train`` and ``comem eval`` never branch on it."""
    if name == "ava":
        from comem.tasks.ava.task import AvaTask

        return AvaTask
    if name == "classify":
        from comem.tasks.classification import ClassificationTask

        return ClassificationTask
    raise ValueError(f"task must be one of classify, ava; got {name!r}")
