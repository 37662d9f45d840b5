"""Inference: a checkpoint or a model in, a prediction and its pictures out (docs/architecture.md).

``trained`` loads a finished run's model, ``predict`` scores a video file or tensor, ``predictor``
is the public ``comem.load`` object, ``timeline`` draws what each clip read.
"""
