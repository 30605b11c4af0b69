"""Faithfulness: ROAR, KAR and ROAD curves on the digits, and ROAD's speed against Quantus.

Same as ``xai-feedback bench roar``. Run: python benchmarks/faithfulness.py [--repeats 3]
An interrupted run resumes where it stopped when started again with the same --out.
"""

import sys

from xai_feedback.bench.faithfulness import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
