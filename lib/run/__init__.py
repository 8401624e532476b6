"""The runner side: a matrix of RunSpecs -> one training process per run, placed on slots of
this machine (local executor) or on a Slurm cluster, with its memory sampler, the dry-run plan
and the live progress. Imports config, matrix and the lower blocks; never the trainer side (train/).
"""
