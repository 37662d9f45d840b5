"""AVA spatio-temporal action detection: the data layout and keyframe dataset (``data``), frames
from JPEG folders or movie files (``frames``), the RoI detector (``model``), the official evaluator
(``evaluation``), the synthetic AVA-format set (``synthetic``) and the task the trainer runs (``task``)."""
