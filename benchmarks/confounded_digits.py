"""Explanation penalties against label-tied confounds; same as ``xai-feedback bench decoy``.

Run: python benchmarks/confounded_digits.py [--seeds 5] [--confounds frame,swatch8,swatch4]
"""

import sys

from xai_feedback.bench.decoy import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
