"""The training engine behind train.py."""
