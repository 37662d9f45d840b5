"""Video data, file to tensor (docs/datasets.md): formats -> sampling (pure index math) -> decode ->
datasets -> transforms; the synthetic data, data checks and loader throughput. It never knows the mode
or the task (docs/architecture.md).
"""
