"""`python -m utils.demo`: see utils/demo/pipeline.py."""
from utils.demo.pipeline import main
from utils.errors import run_cli

raise SystemExit(run_cli(main))
