"""Proxy attention on the frame-confounded digits: mine, explain, mask, keep training.

Run: python examples/04_proxy_attention.py
"""

import torch

from xai_feedback.data import confounded_digits, load_digits
from xai_feedback.models import GAPNet
from xai_feedback.proxy import ProxyAttention, ProxySchedule, train_with_proxy
from xai_feedback.training import accuracy

torch.set_num_threads(2)
train = confounded_digits("train", "frame", seed=0)
tests = {"clean": load_digits("test"), "confound": confounded_digits("test", "frame", seed=0)}
schedule = ProxySchedule([3, "p", 3, "p", 3])

for plan in (schedule.without_proxies(), schedule):
    g = torch.Generator().manual_seed(0)
    model = GAPNet(width=16, generator=g)
    history = train_with_proxy(
        model,
        train,
        plan,
        proxy=ProxyAttention(threshold=0.85),
        method="grad_cam_pp",
        fraction=0.2,
        generator=g,
    )
    made = [r.hard_examples for r in history.rounds]
    clean, confound = accuracy(model, tests["clean"]), accuracy(model, tests["confound"])
    print(
        f"schedule {list(plan.steps)!s:22s} proxies per round {made}  "
        f"clean {clean:.3f}  confound {confound:.3f}"
    )
