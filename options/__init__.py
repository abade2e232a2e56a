"""Command-line options of train.py and test.py."""
from options.base_options import BaseOptions, network_config
from options.test_options import TestOptions
from options.train_options import TrainOptions

__all__ = ["BaseOptions", "TestOptions", "TrainOptions", "network_config"]
