"""MetaWorld v3 tasks with natural-language instructions.

Every task has several training paraphrases (written into recorded datasets) and one held-out
paraphrase used only at evaluation, so a policy is measured on wording it never saw. Every
paraphrase maps back to exactly one task: `task_for_instruction` recovers the sim task of any
recorded episode from its instruction text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

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


def _load_specs() -> tuple[TaskSpec, ...]:
    """The task table, in MetaWorld's order (MT10 first): sim/task_instructions.json."""
    table = json.loads((Path(__file__).with_name("task_instructions.json")).read_text())
    return tuple(
        TaskSpec(t["name"], tuple(t["train"]), t["held_out"], t.get("show_goal", False))
        for t in table["tasks"]
    )


_SPECS: tuple[TaskSpec, ...] = _load_specs()

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
