"""The model that ships with the project: the default of every command that needs a trained one."""
from pathlib import Path

SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "pretrained" / "HybriMamba-tiny-x8.pt"
