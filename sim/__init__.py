"""ceed_vla.sim: MetaWorld v3 tasks with language, scripted experts, recording and evaluation.

- `tasks`    the task registry: training paraphrases and one held-out paraphrase per task
- `env`      one task with fast headless rendering and observations as in docs/interfaces.md
- `experts`  MetaWorld's scripted policies behind the policy API
- `record`   `ceed record`: expert demonstrations into a LeRobotDataset v3, resumable
- `evaluate` `ceed eval`: the evaluation runner (paused, real-time and delay clocks) and its reports
- `bench`    `ceed bench env`: env steps/s with rendering, ours vs LeRobot's MetaWorld env
"""
