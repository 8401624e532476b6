"""The trainer side, inside one run's process: read run.json, build the task, run the one
training loop, checkpoint, DDP, batch plan, MFU, write metrics.json. Model folders call in here;
nothing here imports a model folder or the runner.
"""
