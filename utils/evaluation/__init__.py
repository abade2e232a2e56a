"""Inference and metrics behind test.py, psnr_ssim.py and calc_lpips.py."""
