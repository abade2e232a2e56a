"""Everything the scripts need beyond the network (models/) and the datasets (data/).

training/    the training engine: trainer, checkpoints, EMA, data order, logs, run folders, stop signals
evaluation/  test.py's inference, PSNR/SSIM/LPIPS, result tables, side-by-side pictures
demo/        `python -m utils.demo`: train, test and score a small model on built-in faces
The modules here are shared by them: errors, image files and tensors, progress, devices, host memory.
"""
