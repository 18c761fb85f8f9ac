"""ceed_vla.distill"""
