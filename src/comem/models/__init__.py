"""Video models (docs/models.md): backbones exposing named stages, the memories placed after them, the
head, ``VideoModel`` and ``wrap`` for any network, pretrained loading and FLOPs. A model never reads
the config (docs/architecture.md).
"""
