"""Restore the small faces of real photos: python enhance.py INPUT --out DIR (see utils/photo/cli.py)."""
from utils.errors import run_cli
from utils.photo.cli import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
