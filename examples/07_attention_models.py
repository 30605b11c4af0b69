"""Attention models: train CBAM on the digits, read its attention maps and its CAMs.

Run: python examples/07_attention_models.py
"""

import torch

from xai_feedback.data import load_digits
from xai_feedback.hooks import CAMHook
from xai_feedback.models import WARN, ResidualAttentionNet, SimpleCNN
from xai_feedback.training import accuracy, fit

torch.set_num_threads(2)
train, test = load_digits("train"), load_digits("test")
g = torch.Generator().manual_seed(0)
model = SimpleCNN(width=16, cbam=True, generator=g)
fit(model, train, epochs=5, generator=g)
print(f"SimpleCNN + CBAM test accuracy {accuracy(model, test):.3f}")

model.eval()
images = test.images[:4]
with CAMHook(model) as hook:
    logits = model(images)
    cams = hook.maps(logits, None, method="cam", size=(28, 28))
for name, maps in model.attention_maps().items():
    print(f"attention {name}: {tuple(maps.shape)}, range [{maps.min():.2f}, {maps.max():.2f}]")
predicted, true = logits.argmax(1).tolist(), test.labels[:4].tolist()
print(f"CAMs {tuple(cams.shape)}; predicted {predicted}, true {true}")

for other in (ResidualAttentionNet(width=4), WARN(widen=1, units=1)):
    other(images)
    print(type(other).__name__, {k: tuple(v.shape) for k, v in other.attention_maps().items()})
