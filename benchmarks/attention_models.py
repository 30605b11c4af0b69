"""Attention architectures on the digits: accuracy over seeds, parameters, time, maps.

Same as ``xai-feedback bench attention``. Run: python benchmarks/attention_models.py [--seeds 3]
"""

import sys

from xai_feedback.bench.attention import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
