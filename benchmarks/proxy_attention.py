"""Proxy Attention: accuracy with/without proxies and generation throughput.

Same as ``xai-feedback bench proxy``. Run: python benchmarks/proxy_attention.py [--seeds 5]
"""

import sys

from xai_feedback.bench.proxy import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
