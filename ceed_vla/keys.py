"""The names of what a policy reads and writes, LeRobot's vocabulary (imports nothing of the project).

A batch or an observation is a dict: one camera is `observation.image`, several are
`observation.images.<camera>`; the proprioceptive state is `observation.state`, the instruction
`task`, the action chunk `action` (with `action_is_pad` where a chunk runs past the episode's end).
"""

IMAGE_KEY = "observation.image"
CAMERA_KEY_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"
TASK_KEY = "task"
FINAL_STATE_KEY = "episode.final_state"  # training-only: the state at the sample's episode end
# training-only, forced-prefix samples: d given steps [] long, their bin offsets [K, D] long
PREFIX_STEPS_KEY = "action_prefix_steps"
PREFIX_OFFSET_KEY = "action_prefix_offset"
