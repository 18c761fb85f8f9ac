"""ceed_vla.robot_bridge: the policy on ROS 2 arms (docs/robot_bridge.md).

ROS-free logic, unit-tested without DDS:
    config      BridgeConfig / SafetyConfig (validated; every field is a ROS parameter)
    safety      SafetyFilter (the one output filter: finite, limits, delta clamp; holds ramp),
                EStopLatch, StaleWatchdog (arrival and header stamps)
    core        BridgeCore: observations in, one safe command per control tick out; its chunks are
                scheduled by ceed_vla.scheduler.ChunkScheduler, the class `ceed eval` uses too
    inference   InferenceWorker: background refills of the queue from any policy
    policies    load_policy: "checkpoint:DIR", "expert", "sine[:AMPLITUDE]"
Thin ROS layer:
    conversions message <-> array conversions with input validation
    node        PolicyBridgeNode (lifecycle) and `ceed-policy-bridge`
    sim_robot   SimRobotNode: a MetaWorld task behind robot topics, `ceed-sim-robot`
    launcher    `ceed bridge --params FILE`; bench: `ceed bench bridge`
    faults      `ceed bench bridge --faults`: attacks replayed against the node over DDS
"""
