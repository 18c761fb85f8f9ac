"""ceed_vla.sim"""
