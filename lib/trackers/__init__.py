"""Experiment trackers (W&B, Trackio): their Kconfig settings and the backends a trainer logs to.
"""
