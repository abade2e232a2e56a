"""The web page's server: the standard library's HTTP server, one page and a small JSON API.

    GET  /             the page (page.html)
    GET  /api/info     the model: its name, configuration, task and provenance
    POST /api/enhance  body: an image file's bytes; query: treat_as=auto|lr|hr|photo and name=FILE
                       -> {"lr", "bicubic", "sr", "hr"} as PNG data URLs (hr null for an LR face),
                          treated_as, input_size, lr_size, size, seconds, and for a photo (treated_as
                          "photo": lr is the photo, bicubic and sr are it enlarged, hr null) its faces
                          (utils/web/photos.py)

"auto" takes an image up to 32x32 as an LR face, one up to 256 pixels a side as a sharp face, and a
larger one as a photo with faces.

A failure is {"error": one line} with status 400 (a bad upload), 413 (too large) or 500.
"""
import base64
import io
import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from PIL import Image

from utils.errors import UserError, user_message
from utils.image_io import decode_rgb
from utils.web.faces import TREAT_AS, restore_face
from utils.web.photos import PhotoEnhancer, is_photo

PAGE = Path(__file__).with_name("page.html")
MAX_UPLOAD_BYTES = 32 * 2**20
MAX_PIXELS = 50_000_000  # a face is refused above this: a face photo needs far less memory
MODES = (*TREAT_AS, "photo")
log = logging.getLogger("hybrimamba")


def png_data_url(img):
    """An RGB uint8 array as a ``data:image/png;base64,...`` URL."""
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class FaceApp:
    """The model behind the page and its work; one image at a time, as the model uses every CPU thread."""

    def __init__(self, model, name):
        self.model, self.name = model, name
        self.photos = PhotoEnhancer(model)
        self.lock = threading.Lock()

    def info(self):
        return {"model": self.name, "config": self.model.config.to_dict(), "task": self.model.task,
                "provenance": self.model.provenance}

    def enhance(self, data, treat_as="auto", name="upload"):
        """The API's answer for the image file bytes ``data``; a bad upload raises ``UserError``."""
        if treat_as not in MODES:
            raise UserError(f"treat_as={treat_as!r}: use one of {', '.join(MODES)}")
        img = decode_rgb(data, name)
        if treat_as == "photo" or (treat_as == "auto" and is_photo(img.shape[1], img.shape[0])):
            return self.enhance_photo(img, name)
        if img.shape[0] * img.shape[1] > MAX_PIXELS:
            raise UserError(f"{name}: {img.shape[1]}x{img.shape[0]} pixels; crop the face first (at most "
                            f"{MAX_PIXELS // 10**6} megapixels)")
        start = time.perf_counter()
        with self.lock:
            out = restore_face(self.model, img, treat_as)
        answer = {key: None if out[key] is None else png_data_url(out[key]) for key in ("lr", "bicubic", "sr", "hr")}
        answer.update(treated_as=out["treated_as"], input_size=[img.shape[1], img.shape[0]],
                      lr_size=[out["lr"].shape[1], out["lr"].shape[0]], size=[out["sr"].shape[1], out["sr"].shape[0]],
                      seconds=round(time.perf_counter() - start, 3))
        return answer

    def enhance_photo(self, photo, name):
        """The API's answer for a photo with faces: the photo, it enlarged by bicubic and enhanced, its faces."""
        start = time.perf_counter()
        with self.lock:
            bicubic, enhanced, faces = self.photos.enhance(photo, name)
        size = [photo.shape[1], photo.shape[0]]
        return {"lr": png_data_url(photo), "bicubic": png_data_url(bicubic), "sr": png_data_url(enhanced), "hr": None,
                "treated_as": "photo", "faces": faces, "input_size": size, "lr_size": size,
                "size": [enhanced.shape[1], enhanced.shape[0]], "seconds": round(time.perf_counter() - start, 3)}


class Handler(BaseHTTPRequestHandler):
    """The page and the API for ``app`` (a FaceApp; ``make_server`` binds it)."""
    app = None
    server_version = "HybriMamba"

    def do_GET(self):
        path = urlparse(self.path).path
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif path == "/api/info":
            self._json(HTTPStatus.OK, self.app.info())
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {path}; the page is /"})

    def do_POST(self):
        url = urlparse(self.path)
        if url.path != "/api/enhance":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no API {url.path}; POST an image to /api/enhance"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_UPLOAD_BYTES:
            self.close_connection = True  # the body is not read
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       {"error": f"the file has {length / 2**20:.1f} MB; send at most {MAX_UPLOAD_BYTES // 2**20} MB"})
            return
        if length <= 0:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "empty upload: send the image file's bytes"})
            return
        data = self.rfile.read(length)
        query = parse_qs(url.query)
        name = query.get("name", ["upload"])[0]
        try:
            answer = self.app.enhance(data, query.get("treat_as", ["auto"])[0], name)
        except UserError as err:
            self._json(HTTPStatus.BAD_REQUEST, {"error": user_message(err)})
            return
        except Exception as err:  # the server keeps serving; the page shows the reason
            log.exception(f"web: {name} failed")
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(err).__name__}: {err}".splitlines()[0]})
            return
        self._json(HTTPStatus.OK, answer)

    def _json(self, status, obj):
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        log.info("web: %s %s", self.address_string(), format % args)


def make_server(app, host="127.0.0.1", port=8000):
    """A ThreadingHTTPServer for ``app`` listening on ``host``:``port`` (0: a free port; see server_address)."""
    handler = type("FaceAppHandler", (Handler,), {"app": app})
    return ThreadingHTTPServer((host, port), handler)
