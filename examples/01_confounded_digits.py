"""A CNN learns a label-tied frame instead of the digits (the problem the penalties fix).

Run: python examples/01_confounded_digits.py
"""

import torch

from xai_feedback.data import confounded_digits, load_digits
from xai_feedback.models import GAPNet
from xai_feedback.training import accuracy, fit

torch.set_num_threads(2)
train = confounded_digits("train", "frame", size=2, seed=0)
clean_test = load_digits("test")
confound_test = confounded_digits("test", "frame", size=2, seed=0)

for oracle in (False, True):
    data = confounded_digits("train", "frame", rule="random") if oracle else train
    g = torch.Generator().manual_seed(0)
    model = GAPNet(width=16, generator=g)
    fit(model, data, epochs=10, generator=g)
    name = "oracle (random frame gray)" if oracle else "vanilla (frame tied to label)"
    print(
        f"{name:32s} train {accuracy(model, data):.3f}  clean test "
        f"{accuracy(model, clean_test):.3f}  confound test {accuracy(model, confound_test):.3f}"
    )
