"""Everything the scripts need beyond the network (models/) and the datasets (data/), in two layers.

The modules directly in utils/ are the bottom layer: errors and one-line messages, image files,
atomic file writing, the rule for every output file (output_files), progress, host memory. They import
nothing of the project's and no torch, so every package can use them and every script answers --help quickly.

The subpackages are the engines, above models/, data/ and options/:
training/    the training engine: trainer, training state and resume, EMA, data order, logs, run folders
evaluation/  test.py's inference, PSNR/SSIM/LPIPS, result tables, side-by-side pictures
demo/        `python -m utils.demo`: train, test and score a small model on built-in faces
web/         `python -m utils.web`: a local web page that super-resolves a dropped face
This file imports none of them (tests/test_layers.py checks the layers).
"""
