"""ceed_vla.robot_bridge"""
