"""Readers of result directories, ours (all_results.json, per-run folders) and upstream
AdamWPrune's layout; every file is foreign data: read, never executed, never written.
"""
