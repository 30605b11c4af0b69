"""Every attribution method and ensemble on a trained digits CNN, as (B, H, W) maps.

Run: python examples/03_attribution_methods.py
"""

import torch

from xai_feedback.attribution import attribute
from xai_feedback.data import load_digits
from xai_feedback.methods import method_names
from xai_feedback.models import GAPNet
from xai_feedback.training import fit

torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
model = GAPNet(width=16, generator=g)
fit(model, load_digits("train"), epochs=4, generator=g)
test = load_digits("test")
x, y = test.images[:8], test.labels[:8]

for method in (m for m in method_names() if m not in method_names("relevance")):  # relevance: ViTs
    steps = {"n_steps": 16} if method == "integrated_gradients" else None
    maps = attribute(model, x, y, method=method, reduce="abs_sum", options=steps)
    # share of attribution inside the central 20x20 box where the digit lives
    inside = float(maps[:, 4:24, 4:24].sum() / maps.sum())
    print(f"{method:22s} maps {tuple(maps.shape)}  share on the digit box {inside:.2f}")

for ensemble in ("smoothgrad", "smoothgrad_sq", "vargrad"):
    maps = attribute(
        model,
        x,
        y,
        method="saliency",
        ensemble=ensemble,
        n_samples=16,
        noise_level=0.15,
        reduce="sum",
        generator=torch.Generator().manual_seed(1),
    )
    print(f"saliency + {ensemble:13s} maps {tuple(maps.shape)}  max {float(maps.max()):.3g}")
