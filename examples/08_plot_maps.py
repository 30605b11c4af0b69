"""Heat maps of two models side by side with plot_maps: plain cross-entropy vs the CAM penalty.

Trains GAPNet twice on digits with a label-tied frame, once with plain cross-entropy and once
with the Gaussian CAM center penalty, then draws, for six confound-test digits, the CAM of
the predicted class of each model and the saliency map of each (one row each, one shared
scale and color bar per row). Writes the figure to the path given (default maps_grid.png;
the docs use docs/_static/maps_grid.png).

Run: python examples/08_plot_maps.py [OUT.png]   (about a minute on 2 CPU cores)
"""

import sys

import matplotlib

matplotlib.use("Agg")

import torch

from xai_feedback.attribution import attribute
from xai_feedback.data import confounded_digits
from xai_feedback.hooks import CAMHook
from xai_feedback.losses import CenterPenalty
from xai_feedback.models import GAPNet
from xai_feedback.objectives import cam_penalty_objective
from xai_feedback.training import accuracy, fit
from xai_feedback.viz import plot_maps

out = sys.argv[1] if len(sys.argv) > 1 else "maps_grid.png"
torch.set_num_threads(2)
train = confounded_digits("train", "frame", size=2, seed=0)
test = confounded_digits("test", "frame", seed=0)
objectives = {
    "plain CE": None,
    "CE + CAM penalty": cam_penalty_objective(CenterPenalty(sigma=0.7), 10.0),
}
images, labels = test.images[:6], test.labels[:6]
rows: dict[str, torch.Tensor] = {}
for name, objective in objectives.items():
    g = torch.Generator().manual_seed(0)
    model = GAPNet(width=8, generator=g)
    kwargs = {} if objective is None else {"objective": objective}
    fit(model, train, epochs=8, generator=g, **kwargs)
    model.eval()
    print(f"{name}: confound-test accuracy {accuracy(model, test):.3f}")
    with CAMHook(model) as hook:
        logits = model(images)
        rows[f"{name}\nCAM"] = hook.maps(logits, method="cam").detach()  # predicted class
    rows[f"{name}\nsaliency"] = attribute(model, images, labels, method="saliency")[:, 0]

fig = plot_maps(images, rows, titles=[f"label {int(y)}" for y in labels])
fig.suptitle("Confound-test digits (frame gray random): where each model looks", fontsize=9)
fig.savefig(out, dpi=110)
print(f"wrote {out}")
