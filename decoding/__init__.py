"""ceed_vla.decoding"""
