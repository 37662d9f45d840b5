"""comem: video-level training with collaborative memory."""

__version__ = "0.1.0"
