"""PCACE: the batched ACE against the ``ace`` package looped over channels.

Same as ``xai-feedback bench pcace``. Run: python benchmarks/pcace.py [--parts synthetic,real]
"""

import sys

from xai_feedback.bench.pcace import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
