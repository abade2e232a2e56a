"""The web page, `python -m utils.web`: drop a face, see its LR, bicubic and HybriMamba versions side by side.

faces.py   the work on one uploaded face (LR, bicubic, super-resolved)
server.py  a small local HTTP server (the standard library's) that serves page.html and that work
page.html  the page: plain HTML, CSS and JavaScript, nothing fetched from elsewhere
"""
