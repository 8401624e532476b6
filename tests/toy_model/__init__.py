"""A model that lives outside the project's model folders, to show what adding
one takes: this folder (train.py) plus one registry entry, declared here and
registered when the package is imported (by the test, and by the trainer
process before anything else). No file of lib/ names it."""
from lib.models import CLASSIFICATION, ModelEntry, register

TOY = register(ModelEntry("toy", "Toy MLP (two Gaussian blobs)", CLASSIFICATION, "tests.toy_model.train",
                          lr_schedule="constant", activation_mib_per_sample=0.01))
