"""MetaWorld v3 tasks with natural-language instructions.

Every task has several training paraphrases (written into recorded datasets) and one held-out
paraphrase used only at evaluation, so a policy is measured on wording it never saw. Every
paraphrase maps back to exactly one task: `task_for_instruction` recovers the sim task of any
recorded episode from its instruction text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MT10: tuple[str, ...] = (
    "reach",
    "push",
    "pick-place",
    "door-open",
    "drawer-open",
    "drawer-close",
    "button-press-topdown",
    "peg-insert-side",
    "window-open",
    "window-close",
)
"""The ten tasks of MetaWorld's MT10 benchmark, in its order."""

TASK_SETS: dict[str, tuple[str, ...]] = {"mt10": MT10}


class UnknownTaskError(ValueError):
    """A task name or instruction that the registry does not know."""


@dataclass(frozen=True)
class TaskSpec:
    """One MetaWorld task and the words used to ask for it.

    `show_goal` enlarges the rendered goal site for tasks whose goal is a free point in space
    (nothing else in the scene says where to go).
    """

    name: str
    train_instructions: tuple[str, ...]
    eval_instruction: str
    show_goal: bool = False

    def __post_init__(self) -> None:
        if len(self.train_instructions) < 2:
            raise ValueError(
                f"task {self.name!r} needs at least 2 training paraphrases, got {self.train_instructions!r}"
            )
        if self.eval_instruction in self.train_instructions:
            raise ValueError(
                f"task {self.name!r}: the eval paraphrase {self.eval_instruction!r} is also a training one"
            )

    @property
    def env_name(self) -> str:
        """MetaWorld's registry key, e.g. `reach-v3`."""
        return f"{self.name}-v3"

    @property
    def instructions(self) -> tuple[str, ...]:
        return (*self.train_instructions, self.eval_instruction)

    def train_instruction(self, episode_index: int) -> str:
        """The training paraphrase for an episode: cycles through them so each gets used evenly."""
        return self.train_instructions[episode_index % len(self.train_instructions)]


def _t(name: str, train: Sequence[str], held_out: str, show_goal: bool = False) -> TaskSpec:
    return TaskSpec(name, tuple(train), held_out, show_goal)


_SPECS: tuple[TaskSpec, ...] = (
    # MT10: four training paraphrases each.
    _t(
        "reach",
        [
            "reach the red goal",
            "move the gripper to the red dot",
            "touch the red marker",
            "go to the red target",
        ],
        "bring the hand to the red ball",
        show_goal=True,
    ),
    _t(
        "push",
        [
            "push the puck to the green goal",
            "slide the puck onto the green dot",
            "shove the puck to the green marker",
            "push the puck over to the green target",
        ],
        "nudge the puck until it reaches the green ball",
        show_goal=True,
    ),
    _t(
        "pick-place",
        [
            "pick up the puck and place it at the blue goal",
            "grasp the puck and move it to the blue dot",
            "lift the puck and put it on the blue marker",
            "pick the puck and carry it to the blue target",
        ],
        "take the puck and set it down at the blue ball",
        show_goal=True,
    ),
    _t(
        "door-open",
        ["open the door", "pull the door open", "swing the safe door open", "open the safe"],
        "swing the door outward until it is open",
    ),
    _t(
        "drawer-open",
        ["open the drawer", "pull the drawer out", "slide the drawer open", "pull the drawer handle"],
        "draw the drawer towards you",
    ),
    _t(
        "drawer-close",
        ["close the drawer", "push the drawer shut", "slide the drawer closed", "push the drawer in"],
        "shut the open drawer",
    ),
    _t(
        "button-press-topdown",
        [
            "press the button from the top",
            "push the button down",
            "press down on the red button",
            "push the top button",
        ],
        "hit the button from above",
    ),
    _t(
        "peg-insert-side",
        [
            "insert the peg into the hole",
            "put the peg in the side hole",
            "slide the peg into the box hole",
            "push the peg sideways into the hole",
        ],
        "fit the peg into the opening in the box",
    ),
    _t(
        "window-open",
        [
            "open the window",
            "slide the window open",
            "push the window to the side to open it",
            "open the sliding window",
        ],
        "move the window pane until it is open",
    ),
    _t(
        "window-close",
        [
            "close the window",
            "slide the window shut",
            "push the window closed",
            "close the sliding window",
        ],
        "move the window pane until it is shut",
    ),
    # The other forty MetaWorld v3 tasks: three training paraphrases each.
    _t(
        "assembly",
        ["put the ring on the peg", "place the nut over the peg", "slide the ring onto the peg"],
        "assemble the nut onto the peg",
    ),
    _t(
        "basketball",
        ["dunk the ball in the hoop", "put the ball in the basket", "score the ball in the hoop"],
        "drop the ball through the hoop",
    ),
    _t(
        "bin-picking",
        [
            "move the puck to the other bin",
            "pick the puck from one bin into the other",
            "transfer the puck between the bins",
        ],
        "carry the puck over to the second bin",
    ),
    _t(
        "box-close",
        ["put the lid on the box", "close the box with its lid", "place the lid onto the box"],
        "cover the box with the lid",
    ),
    _t(
        "button-press-topdown-wall",
        [
            "press the button from the top behind the wall",
            "push the button down past the wall",
            "press down on the button behind the wall",
        ],
        "hit the walled button from above",
    ),
    _t(
        "button-press",
        ["press the button", "push the button in", "press the button forward"],
        "poke the button on the front",
    ),
    _t(
        "button-press-wall",
        [
            "press the button behind the wall",
            "push the button in past the wall",
            "press the button beyond the wall",
        ],
        "reach over the wall and push the button",
    ),
    _t(
        "coffee-button",
        [
            "press the coffee machine button",
            "push the button on the coffee machine",
            "start the coffee machine",
        ],
        "hit the coffee maker's button",
    ),
    _t(
        "coffee-pull",
        [
            "pull the mug from the coffee machine",
            "take the mug away from the coffee machine",
            "slide the mug out of the coffee machine",
        ],
        "draw the cup back from the coffee maker",
        show_goal=True,
    ),
    _t(
        "coffee-push",
        [
            "push the mug under the coffee machine",
            "slide the mug into the coffee machine",
            "move the mug under the spout",
        ],
        "place the cup beneath the coffee maker",
    ),
    _t("dial-turn", ["turn the dial", "rotate the dial", "spin the dial around"], "twist the knob"),
    _t(
        "disassemble",
        ["take the ring off the peg", "remove the nut from the peg", "lift the ring off the peg"],
        "pull the nut up and off the peg",
    ),
    _t("door-close", ["close the door", "push the door shut", "swing the door closed"], "shut the open door"),
    _t(
        "door-lock",
        ["lock the door", "turn the door lock", "rotate the lock to lock the door"],
        "set the lock on the door",
    ),
    _t(
        "door-unlock",
        ["unlock the door", "turn the lock to unlock the door", "rotate the door lock open"],
        "release the lock on the door",
    ),
    _t(
        "hand-insert",
        [
            "put the puck in the hole",
            "insert the puck into the hole in the table",
            "drop the puck into the hole",
        ],
        "guide the puck into the table hole",
    ),
    _t(
        "faucet-open",
        ["open the faucet", "turn the faucet on", "rotate the faucet handle to open"],
        "turn on the tap",
    ),
    _t(
        "faucet-close",
        ["close the faucet", "turn the faucet off", "rotate the faucet handle to close"],
        "turn off the tap",
    ),
    _t(
        "hammer",
        ["hammer the nail", "hit the nail with the hammer", "drive the nail in with the hammer"],
        "use the hammer to knock in the nail",
    ),
    _t(
        "handle-press-side",
        [
            "press the handle down from the side",
            "push the side handle down",
            "press the handle sideways down",
        ],
        "push down on the handle from its side",
    ),
    _t(
        "handle-press",
        ["press the handle down", "push the handle down", "press down on the handle"],
        "lower the handle by pressing it",
    ),
    _t(
        "handle-pull-side",
        ["pull the handle up from the side", "lift the side handle", "pull the handle up sideways"],
        "raise the handle from its side",
    ),
    _t("handle-pull", ["pull the handle up", "lift the handle", "pull up on the handle"], "raise the handle"),
    _t("lever-pull", ["pull the lever up", "lift the lever", "raise the lever"], "pull up on the lever arm"),
    _t(
        "pick-place-wall",
        [
            "pick up the puck and place it at the goal behind the wall",
            "lift the puck over the wall to the goal",
            "carry the puck past the wall to the goal",
        ],
        "move the puck over the wall onto the target",
        show_goal=True,
    ),
    _t(
        "pick-out-of-hole",
        ["pick the puck out of the hole", "lift the puck out of the hole", "take the puck out of the hole"],
        "remove the puck from the hole",
        show_goal=True,
    ),
    _t(
        "plate-slide",
        [
            "slide the plate into the goal",
            "push the plate into the net",
            "slide the plate forward into the goal",
        ],
        "shove the plate into the cage",
    ),
    _t(
        "plate-slide-side",
        [
            "slide the plate sideways into the goal",
            "push the plate into the side net",
            "slide the plate to the side into the goal",
        ],
        "shove the plate sideways into the cage",
    ),
    _t(
        "plate-slide-back",
        [
            "slide the plate back out of the goal",
            "pull the plate out of the net",
            "slide the plate back towards you",
        ],
        "draw the plate out of the cage",
    ),
    _t(
        "plate-slide-back-side",
        [
            "slide the plate back sideways out of the goal",
            "pull the plate sideways out of the net",
            "slide the plate out of the side goal",
        ],
        "draw the plate sideways out of the cage",
    ),
    _t(
        "peg-unplug-side",
        ["unplug the peg", "pull the peg out of the hole", "remove the peg from the side hole"],
        "draw the peg out sideways",
        show_goal=True,
    ),
    _t(
        "soccer",
        ["kick the ball into the goal", "push the soccer ball into the net", "score the ball in the goal"],
        "get the ball into the net",
    ),
    _t(
        "stick-push",
        [
            "push the thermos with the stick",
            "use the stick to push the thermos",
            "grab the stick and push the thermos",
        ],
        "shove the bottle using the stick",
        show_goal=True,
    ),
    _t(
        "stick-pull",
        [
            "pull the thermos with the stick",
            "use the stick to pull the thermos",
            "grab the stick and pull the thermos",
        ],
        "drag the bottle back using the stick",
        show_goal=True,
    ),
    _t(
        "push-wall",
        [
            "push the puck past the wall to the goal",
            "slide the puck around the wall to the goal",
            "push the puck to the goal behind the wall",
        ],
        "shove the puck beyond the wall onto the target",
        show_goal=True,
    ),
    _t(
        "push-back",
        [
            "push the puck back to the goal",
            "slide the puck backwards to the goal",
            "pull the puck back to the goal",
        ],
        "bring the puck back onto the target",
        show_goal=True,
    ),
    _t(
        "reach-wall",
        [
            "reach the goal behind the wall",
            "move the gripper past the wall to the goal",
            "touch the goal beyond the wall",
        ],
        "bring the hand over the wall to the target",
        show_goal=True,
    ),
    _t(
        "shelf-place",
        ["put the block on the shelf", "place the block onto the shelf", "lift the block onto the shelf"],
        "set the cube on the shelf",
        show_goal=True,
    ),
    _t(
        "sweep-into",
        ["sweep the puck into the hole", "brush the puck into the hole", "slide the puck into the hole"],
        "push the puck so it falls in the hole",
    ),
    _t(
        "sweep",
        ["sweep the puck off the table", "brush the puck off the edge", "slide the puck off the table"],
        "push the puck over the table edge",
    ),
)

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}

_BY_INSTRUCTION: dict[str, str] = {}
for _spec in _SPECS:
    for _text in _spec.instructions:
        if _text in _BY_INSTRUCTION:
            raise RuntimeError(
                f"instruction {_text!r} is used by both {_BY_INSTRUCTION[_text]!r} and {_spec.name!r}"
            )
        _BY_INSTRUCTION[_text] = _spec.name


def _normalise(name: str) -> str:
    name = name.strip().lower()
    return name.removesuffix("-goal-observable").removesuffix("-v3")


def get_task(name: str) -> TaskSpec:
    """Look a task up by name (`reach`, `reach-v3`); an unknown name lists the valid ones."""
    key = _normalise(name)
    if key not in TASKS:
        valid = ", ".join(sorted(TASKS))
        sets = ", ".join(TASK_SETS)
        raise UnknownTaskError(f"unknown task {name!r}. Valid task names: {valid}; task sets: {sets}.")
    return TASKS[key]


def resolve_tasks(names: str | Iterable[str]) -> tuple[TaskSpec, ...]:
    """Task specs for a comma-separated string or a list of names; set names (`mt10`) expand."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    out: list[TaskSpec] = []
    for name in names:
        key = name.strip().lower()
        expanded = TASK_SETS.get(key, (name,))
        for item in expanded:
            spec = get_task(item)
            if spec not in out:
                out.append(spec)
    if not out:
        raise UnknownTaskError(f"no task given. Valid task names: {', '.join(sorted(TASKS))}")
    return tuple(out)


def task_selection(tasks: str | Iterable[str]) -> tuple[tuple[str, ...], tuple[TaskSpec, ...]]:
    """(names, specs) of a job's `tasks` option: the one task resolver of `ceed record` and `ceed eval`."""
    specs = resolve_tasks(tasks)
    return tuple(s.name for s in specs), specs


def task_for_instruction(text: str) -> TaskSpec:
    """The task an instruction (training or held-out paraphrase) asks for."""
    name = _BY_INSTRUCTION.get(text.strip())
    if name is None:
        raise UnknownTaskError(
            f"instruction {text!r} is not a paraphrase of any registered task; "
            "instructions are matched exactly (see ceed_vla.sim.tasks.TASKS)"
        )
    return TASKS[name]
