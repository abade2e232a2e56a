"""`python -m utils.web`: the web page on http://127.0.0.1:8000 with the shipped model, on the CPU.

    python -m utils.web [--model FILE] [--port 8000] [--host 127.0.0.1] [--scan_backend auto]
"""
import argparse
import ipaddress
import logging
from pathlib import Path

import numpy as np
import torch

from models import HybriMamba
from models.checkpoint import read_as_release
from models.config import SCAN_BACKENDS
from models.pretrained import SHIPPED_MODEL
from utils.errors import UserError, run_cli
from utils.web.faces import restore_face
from utils.web.server import FaceApp, make_server

log = logging.getLogger("hybrimamba")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m utils.web", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(SHIPPED_MODEL),
                   help="a .safetensors model, or a checkpoint of train.py (default: the shipped 8x model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s; 0 picks a free port")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--scan_backend", choices=SCAN_BACKENDS, default="auto",
                   help="selective-scan backend (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: use 0-65535")
    return args


def main(argv=None):
    args = parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = HybriMamba.from_release(read_as_release(args.model), args.device, args.scan_backend, source=args.model)
    restore_face(model, np.zeros((16, 16, 3), np.uint8))  # the first run builds the CPU scan: before serving
    try:
        server = make_server(FaceApp(model, Path(args.model).name), args.host, args.port)
    except OSError as err:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({err.strerror or err}); "
                        f"choose another --port") from None
    host, port = server.server_address[:2]
    if not ipaddress.ip_address(host).is_loopback:
        log.warning(f"notice: listening on {host}: anyone who reaches this machine can use the page")
    print(f"HybriMamba web page: http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/ "
          f"(model {args.model} on {args.device}; Ctrl+C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
