"""PCACE: rank the channels of a trained CNN's last convolutional layer for one digit class.

Run: python examples/05_pcace.py   (writes pcace_channels.png when matplotlib is installed)
"""

import torch

from xai_feedback.data import load_digits
from xai_feedback.models import GAPNet
from xai_feedback.pcace import capture, pcace
from xai_feedback.training import accuracy, fit

torch.set_num_threads(2)
train, test = load_digits("train"), load_digits("test")
model = GAPNet(width=16, generator=torch.Generator().manual_seed(0))
fit(model, train, epochs=4, generator=torch.Generator().manual_seed(1))
print(f"test accuracy {accuracy(model, test):.3f}")

threes = train.images[train.labels == 3]
result = pcace(model, "features", threes, target=3, n_components=3)
print(f"{result.n_observations} images of class 3, {len(result.scores)} channels")
for name, channels in (("best", result.top(5)), ("worst", result.bottom(5))):
    scores = ", ".join(f"c{c}: {float(result.scores[c]):.3f}" for c in channels)
    print(f"{name:>5}: {scores}")
first = result.first_component
print(
    f"the paper's first-component score ranks channel {result.top(1)[0]} at position "
    f"{int((first > first[result.top(1)[0]]).sum()) + 1}"
)

try:
    import matplotlib

    matplotlib.use("Agg")
    from xai_feedback.viz import plot_channel_ranking

    acts, _ = capture(model, "features", threes)
    plot_channel_ranking(result, acts, threes).savefig("pcace_channels.png", dpi=100)
    print("wrote pcace_channels.png")
except ImportError:
    print("matplotlib is not installed: no figure")
