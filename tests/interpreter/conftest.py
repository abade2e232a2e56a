"""These tests need Triton's interpreter, chosen when triton is imported: tests/test_triton_scan.py runs
them in a subprocess with TRITON_INTERPRET=1. Without it they are not collected (the kernels would be
compiled for a GPU)."""
import os

collect_ignore_glob = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["test_*.py"]
