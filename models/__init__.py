"""The HybriMamba network and its parts (see ARCHITECTURE.md sections 2-3)."""
from models.hybrimamba import HybriMamba
from models.padding import forward_padded

__all__ = ["HybriMamba", "forward_padded"]
