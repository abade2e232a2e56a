"""The network's configuration, defined once: ``HybriMambaConfig`` and the selective-scan backend names.

Everything else derives from the dataclass below: train.py's and test.py's network flags
(options/base_options.py) and param.py's, the network options a checkpoint stores and the export
keeps, and ``HybriMamba(config)`` itself. Adding a network option is one field here (with its help
text and bounds) plus its use in the network.

Torch-free, so that options/ builds ``--help`` without loading torch.
"""
import dataclasses
import math
import numbers
from dataclasses import dataclass, field

from utils.errors import UserError

# The selective-scan backends (models.selective_scan): 'auto' first, then in the order 'auto' prefers them.
SCAN_BACKENDS = ("auto", "cuda", "triton", "cpp", "torch", "ref")


def check_scan_backend(name):
    """``name`` if it is one of ``SCAN_BACKENDS``, else ``UserError``."""
    if name not in SCAN_BACKENDS:
        raise UserError(f"unknown selective-scan backend {name!r}; choose one of {', '.join(SCAN_BACKENDS)}")
    return name


def _network_field(default, help, high, option=True):
    """A config field: its default, command-line help and upper bound (every field must be > 0);
    ``option=False``: not a command-line flag (the data pipeline fixes it)."""
    return field(default=default, metadata={"help": help, "type": type(default), "high": high, "option": option})


@dataclass(frozen=True)
class HybriMambaConfig:
    """The shape of a HybriMamba network (docs/architecture.md §2-3); the defaults are the paper's.

    Every field must be > 0. The upper bounds are far above any useful network: a value beyond them
    is surely a typo or a damaged file, and would otherwise try to build a network no machine holds.
    """

    in_chans: int = _network_field(3, "image channels (RGB)", 16, option=False)
    embed_dim: int = _network_field(32, "channels C of the first stage (the widest stage has 8C)", 1024)
    depth: int = _network_field(2, "HybriMamba blocks (HybriMamba mixer, then LEM) per stage", 64)
    n_layers: int = _network_field(2, "Mamba layers per HybriMamba mixer", 64)
    expand: float = _network_field(1.5, "Mamba inner width d_inner = int(expand x width)", 16.0)
    d_state: int = _network_field(8, "SSM state size N", 1024)
    mlp_ratio: float = _network_field(2.0, "LEM hidden width = int(mlp_ratio x width)", 16.0)

    def __post_init__(self):
        # Normalised (an int expand becomes a float), so that equal configs compare and print alike.
        values = _validated({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "HybriMambaConfig")
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def option_fields(cls):
        """The fields that are command-line options (all but ``in_chans``), as ``dataclasses.Field``s."""
        return [f for f in dataclasses.fields(cls) if f.metadata["option"]]

    @classmethod
    def from_dict(cls, values, source):
        """The config of a dict of field values (missing ones take their defaults). A key that is not a
        field, or a value of the wrong type or out of bounds, raises a one-line ``UserError`` naming
        ``source`` (a file, 'command line') and the key."""
        defaults = cls().to_dict()
        unknown = sorted(str(k) for k in values if k not in defaults)
        if unknown:
            raise UserError(f"{source}: unknown network option(s) {', '.join(unknown)}; the network's options "
                            f"are {', '.join(defaults)}")
        return cls(**_validated({**defaults, **values}, source))

    @classmethod
    def from_options(cls, options, source):
        """The config named by a dict that also holds other settings: the parsed command line
        (``vars(opt)``) or the ``options`` a checkpoint stores. Fields it lacks take their defaults."""
        return cls.from_dict({f.name: options[f.name] for f in dataclasses.fields(cls) if f.name in options}, source)

    def to_dict(self):
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def flags(self):
        """The command-line flags that select this config: '--embed_dim 32 --depth 2 ...'."""
        return " ".join(f"--{f.name} {getattr(self, f.name)}" for f in self.option_fields())


def bounds_problem(f, value):
    """What is wrong with the number ``value`` for field ``f`` ('must be > 0', ...), or None."""
    if not math.isfinite(value):
        return "must be a finite number"
    if not value > 0:
        return "must be > 0"
    if value > f.metadata["high"]:
        return f"must be <= {f.metadata['high']:g} (a network this large is surely a mistake)"
    return None


def _validated(values, source):
    """Every field's value type- and bounds-checked and converted to its type; the widths the first
    (narrowest) stage derives must be at least 1. ``UserError`` naming ``source`` and the key otherwise."""
    fields = {f.name: f for f in dataclasses.fields(HybriMambaConfig)}
    out = {}
    for name, value in values.items():
        kind = fields[name].metadata["type"]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if kind is int else numbers.Real):
            raise UserError(f"{source}: network option {name} = {value!r} must be "
                            f"{'an integer' if kind is int else 'a number'}")
        problem = bounds_problem(fields[name], kind(value))
        if problem:
            raise UserError(f"{source}: network option {name} = {value!r} {problem}")
        out[name] = kind(value)
    for name in ("expand", "mlp_ratio"):
        if int(out[name] * out["embed_dim"]) < 1:
            raise UserError(f"{source}: network option {name} = {out[name]!r} gives the first stage "
                            f"(embed_dim {out['embed_dim']}) a width of 0; raise {name} or embed_dim")
    return out
