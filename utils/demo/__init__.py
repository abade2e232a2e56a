"""The demo behind `make demo` (`python -m utils.demo`)."""
