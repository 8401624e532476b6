"""The memory sampler (a separate process per run) and its backends: NVML through pynvml,
nvidia-smi parsing, and process RSS on machines without a GPU (labelled as such).
"""
