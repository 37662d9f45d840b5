"""What differs between the things comem trains: each task supplies its data, model, the loss of one
batch in each training mode, its evaluation and reports (:class:`comem.tasks.base.Task`); the one
loop in :mod:`comem.engine.trainer` runs any of them.

- :mod:`comem.tasks.classification`: video labels (single- or multi-label), multi-view testing.
- :mod:`comem.tasks.ava`: AVA spatio-temporal action detection (person boxes, official frame mAP).
"""
