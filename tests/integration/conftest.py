"""The integration tier: real torchvision/timm models and real peer libraries.

These tests need a second environment (``nox -s integration``, or ``.ci/run``, which builds
``.venv-int`` from ``tests/integration/requirements.txt``). In the unit environment, where
torchvision and the peers are absent, the whole folder is skipped at collection. With
``XAI_FEEDBACK_INTEGRATION=1`` (set by nox and CI) a missing package is an error instead, so
the tier can never pass by collecting nothing.
"""

from __future__ import annotations

import importlib.util
import os

_NEEDED = ("torchvision", "timm", "pytorch_grad_cam", "torchcam", "captum", "lightning")
_MISSING = [name for name in _NEEDED if importlib.util.find_spec(name) is None]

if _MISSING:
    if os.environ.get("XAI_FEEDBACK_INTEGRATION") == "1":
        raise ImportError(
            f"the integration tier needs {', '.join(_MISSING)}: install "
            "tests/integration/requirements.txt (see noxfile.py, session 'integration')."
        )
    collect_ignore_glob = ["test_*.py", "_zoo.py"]
