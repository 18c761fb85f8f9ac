"""ceed_vla.policy"""
