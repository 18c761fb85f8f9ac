"""The demo's profiles: what each `ceed demo --profile NAME` records, trains, distils and evaluates.

Data only. Why each value is what it is, with the measurements behind it, is in docs/demo.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ceed_vla.scheduler import executed_steps
from ceed_vla.sim.env import DEFAULT_CAMERA, DEFAULT_GOAL_MARKER_RADIUS

SCHEDULINGS = ("today", "plan_ahead", "prefix")
"""How a moving-clock row schedules its chunks (`EvalMode.scheduling`)."""


@dataclass(frozen=True)
class EvalMode:
    """One row of the comparison: which checkpoint, which decoding, which clock."""

    name: str
    policy: str  # "teacher" | "student"
    decoding: str  # "ar" | "jacobi" | "early_exit"
    sigma: int | None = None
    tau: int | None = None
    clock: str = "paused"
    sweep: bool = False  # part of the sigma/tau sweep rather than a headline row
    instructions: str | None = None  # "train" | "eval" wording; None: the profile's `eval_instructions`
    delay_ticks: int | None = None  # the delay clock's ticks per policy call (a point of the delay curve)
    forced_prefix: bool | None = None  # None: `ceed eval`'s default (off)
    # None: `ceed eval`'s default (on under the moving clocks, unless prefixed)
    plan_ahead: bool | None = None
    fused: bool = False  # early exit's first iteration in the prefill: one forward at sigma 1
    # early exit, planned ahead under the delay clock: the chunk's steps that run before the next one
    # arrives, this many at this row's delay, decoded exact (`ceed eval --exact-executed`; the speed
    # stage times the decoder with as many exact)
    exact_steps: int | None = None

    @property
    def decoder(self) -> str:
        """The decoder this row runs, as the interleaved speed stage names it
        (`policy/decoding[/sigma=S][/tau=T][/fused]`): rows that differ only in clock or wording share it."""
        parts = [self.policy, self.decoding]
        parts += [f"sigma={self.sigma}"] if self.sigma is not None else []
        parts += [f"tau={self.tau}"] if self.tau is not None else []
        parts += ["fused"] if self.fused else []
        return "/".join(parts + ([f"exact={self.exact_steps}"] if self.exact_steps else []))

    @property
    def scheduling(self) -> str:
        """How a moving-clock row schedules its chunks: "prefix", "plan_ahead" or "today" (the stale
        steps dropped, the rest cross-faded)."""
        if self.forced_prefix:
            return "prefix"
        return "plan_ahead" if self.plan_ahead else "today"

    def cli_args(self) -> list[str]:
        args = ["--decoding", self.decoding, "--clock", self.clock]
        if self.delay_ticks is not None:
            args += ["--delay-ticks", str(self.delay_ticks)]
        if self.forced_prefix is not None:
            args += ["--forced-prefix" if self.forced_prefix else "--no-forced-prefix"]
        if self.plan_ahead is not None:
            args += ["--plan-ahead" if self.plan_ahead else "--no-plan-ahead"]
        if self.sigma is not None:
            args += ["--sigma", str(self.sigma)]
        if self.tau is not None:
            args += ["--tau", str(self.tau)]
        if self.fused:
            args += ["--fused-prefill"]
        if self.exact_steps:
            args += ["--exact-executed"]
        return args


@dataclass(frozen=True)
class DemoProfile:
    name: str
    tasks: tuple[str, ...]
    record_episodes: int
    record_noise: float
    image_size: int
    teacher_steps: int
    teacher_batch: int
    collect_trajectories: int
    distill_steps: int
    distill_batch: int
    eval_episodes: int
    sigma: int
    tau: int | None
    sweep_sigmas: tuple[int, ...]
    # Evaluation wording. Episodes are always held out (seeds disjoint from the recording); "train"
    # gives the instruction in the training wording, as benchmarks with fixed task instructions do,
    # "eval" gives each task's held-out paraphrase, words the from-scratch tokenizer never saw (the
    # teacher passes it through word noise in training: docs/experiments/2026-12-policy-levers.md, "Held-out wording").
    eval_instructions: str = "train"
    # How the scene is seen, the same in recording and evaluation (docs/sim.md): the workspace camera
    # frames the work area; the goal marker is the rendered sphere of reach's and push's free goal.
    camera: str = DEFAULT_CAMERA
    goal_marker_radius: float = DEFAULT_GOAL_MARKER_RADIUS
    seed: int = 0
    threads: int | None = None
    # Recording and evaluation run episodes in this many processes side by side, each on its own share
    # of the cores: a MuJoCo rollout with rendering is single-threaded, and decoding this small a
    # model is bound by per-operation overhead (one thread decodes a chunk as fast as two), so two
    # workers do about twice the episodes. The recording and the evaluated episodes do not depend on
    # it, and every evaluation mode is timed the same way.
    workers: int = 2
    extra_train_args: tuple[str, ...] = ()
    extra_distill_args: tuple[str, ...] = ()
    # `ceed distill collect`'s own flags (every round), e.g. the observation lag the teacher trained with
    extra_collect_args: tuple[str, ...] = ()
    # Actions of each chunk executed before the next observation (None: the whole chunk), in every
    # evaluation. The rest of the chunk, shifted, is the next chunk's initial Jacobi guess.
    execute_steps: int | None = None
    # On-policy rounds after the first: round r collects `collect_trajectories` Jacobi trajectories
    # of round r-1's student and distils it further for `refine_steps` steps. The first round's
    # trajectories come from the teacher, whose states the student stops visiting once it converges
    # faster; its own states are what it meets when decoding.
    distill_rounds: int = 1
    refine_steps: int = 1000
    extra_refine_args: tuple[str, ...] = ()
    # The delay curve (`ceed eval --delay-ticks d`): the student's early exit and teacher AR at each d,
    # in each of `delay_schedulings` ("today": the stale steps dropped, the rest cross-faded;
    # "plan_ahead"; "prefix": the forced prefix); d = 0 is the paused row.
    student_delays: tuple[int, ...] = ()
    teacher_delays: tuple[int, ...] = ()
    delay_schedulings: tuple[str, ...] = ("today", "plan_ahead")
    # today's scheduling only at these delays (None: at every delay of the curve). It is the diagnosis
    # the other schedulings are read against, and on validation seeds it was flat in d (docs/demo.md,
    # "The delay curve"), so a few points show it.
    today_delays: tuple[int, ...] | None = None
    # The student's delay curve, planned ahead, at the delays past `execute_steps`: each chunk runs d
    # steps open loop there, not the `execute_steps` sigma was chosen for, and they are decoded exact
    # (`ceed eval --exact-executed`; more iterations, reported per row). Not the real-time row: there
    # the iterations lengthen the call that sets d (docs/demo.md, "The delay curve").
    student_exact_executed: bool = False
    # the student's real-time row with the forced prefix too, beside the planned-ahead one
    realtime_with_prefix: bool = False
    # teacher AR with each task's held-out paraphrase too (the wording's robustness check)
    heldout_wording_row: bool = True
    # teacher and student exact Jacobi (the teacher's equals AR's outcomes; the student's is its own
    # greedy policy): what the decoder preserves, beside what the early exit keeps
    exact_rows: bool = True
    # the sweep's sigmas also decoded with the fused prefill (one forward per chunk at sigma 1)
    fused_sigmas: tuple[int, ...] = (1,)
    # The speed columns: every decoder of the table timed in one process, interleaved, on recorded
    # observations (`ceed bench speed`): `speed_run_length` consecutive frames of `speed_runs` episodes,
    # `speed_rounds` times, at one thread (as each evaluation worker decodes).
    speed_runs: int = 5
    speed_run_length: int = 4
    speed_rounds: int = 7

    def __post_init__(self):
        if not self.tasks:
            raise ValueError("a demo profile needs at least one task")
        for name in (
            "record_episodes",
            "teacher_steps",
            "collect_trajectories",
            "distill_steps",
            "eval_episodes",
            "distill_rounds",
            "refine_steps",
            "workers",
            "speed_runs",
            "speed_run_length",
            "speed_rounds",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.sigma < 1 or any(s < 1 for s in (*self.sweep_sigmas, *self.fused_sigmas)):
            raise ValueError(
                f"sigmas must be >= 1, got sigma={self.sigma!r}, sweep_sigmas={self.sweep_sigmas!r}, "
                f"fused_sigmas={self.fused_sigmas!r}"
            )
        if self.execute_steps is not None and self.execute_steps < 1:
            raise ValueError(f"execute_steps must be >= 1 or None, got {self.execute_steps!r}")
        if self.student_exact_executed and self.execute_steps is None:
            raise ValueError(
                "student_exact_executed needs execute_steps: without replanning the whole chunk runs, "
                "so the student's exact Jacobi rows already decode it exact"
            )
        bad = [d for d in (*self.student_delays, *self.teacher_delays, *(self.today_delays or ())) if d < 1]
        if bad:
            raise ValueError(f"delays must be >= 1 tick (d = 0 is the paused row), got {bad!r}")
        if self.eval_instructions not in ("train", "eval"):
            raise ValueError(f"eval_instructions must be 'train' or 'eval', got {self.eval_instructions!r}")
        unknown = sorted(set(self.delay_schedulings) - set(SCHEDULINGS))
        if unknown or not self.delay_schedulings:
            raise ValueError(
                f"delay_schedulings {self.delay_schedulings!r}: unknown {unknown}; choose among {SCHEDULINGS}"
            )

    def modes(self) -> list[EvalMode]:
        exact = [
            EvalMode("teacher_jacobi", "teacher", "jacobi"),
            EvalMode("student_jacobi", "student", "jacobi"),
        ]
        headline = [
            EvalMode("teacher_ar", "teacher", "ar"),
            *(exact if self.exact_rows else []),
            EvalMode("student_early_exit", "student", "early_exit", sigma=self.sigma, tau=self.tau),
            *(
                [EvalMode("teacher_ar_heldout_wording", "teacher", "ar", instructions="eval")]
                if self.heldout_wording_row
                else []
            ),
            EvalMode(
                "teacher_ar_realtime", "teacher", "ar", clock="realtime", forced_prefix=False, plan_ahead=True
            ),
            EvalMode(
                "student_early_exit_realtime",
                "student",
                "early_exit",
                self.sigma,
                self.tau,
                clock="realtime",
                forced_prefix=False,
                plan_ahead=True,
            ),
        ]
        if self.realtime_with_prefix:
            headline.append(
                EvalMode(
                    "student_early_exit_realtime_prefix",
                    "student",
                    "early_exit",
                    self.sigma,
                    self.tau,
                    clock="realtime",
                    forced_prefix=True,
                )
            )
        sweep = [
            EvalMode(f"student_sigma{s}", "student", "early_exit", sigma=s, tau=self.tau, sweep=True)
            for s in self.sweep_sigmas
            if s != self.sigma
        ]
        sweep += [
            EvalMode(
                f"student_sigma{s}_fused",
                "student",
                "early_exit",
                sigma=s,
                tau=self.tau,
                sweep=True,
                fused=True,
            )
            for s in self.fused_sigmas
        ]
        return headline + sweep + self.delay_modes()

    def decoders(self) -> dict[str, EvalMode]:
        """The distinct decoders of the table (`EvalMode.decoder` -> its first row), teacher AR first:
        what the speed stage times."""
        out: dict[str, EvalMode] = {}
        for mode in self.modes():
            out.setdefault(mode.decoder, mode)
        return out

    def delay_modes(self) -> list[EvalMode]:
        """The delay curve's points: `<paused row>_d<d>` (today's scheduling), `..._d<d>_plan_ahead` and
        `..._d<d>_prefix`, as `delay_schedulings` asks; today's scheduling only at `today_delays` when set."""
        out = []
        for base, delays in (
            (EvalMode("teacher_ar", "teacher", "ar"), self.teacher_delays),
            (
                EvalMode("student_early_exit", "student", "early_exit", self.sigma, self.tau),
                self.student_delays,
            ),
        ):
            for d in delays:
                for scheduling in self.delay_schedulings:
                    if scheduling == "today" and self.today_delays is not None and d not in self.today_delays:
                        continue
                    name = f"{base.name}_d{d}" + ("" if scheduling == "today" else f"_{scheduling}")
                    prefix, ahead = scheduling == "prefix", scheduling == "plan_ahead"
                    # planned ahead by d, a chunk runs this many steps (the count the scheduler asks exact)
                    runs = (
                        executed_steps(self.execute_steps, d, d)
                        if self.student_exact_executed and base.policy == "student" and ahead
                        else None
                    )
                    out.append(
                        replace(
                            base,
                            name=name,
                            clock="delay",
                            delay_ticks=d,
                            forced_prefix=prefix,
                            plan_ahead=ahead,
                            exact_steps=runs if runs and runs > self.execute_steps else None,
                        )
                    )
        return out


QUICK_TASKS = ("reach", "push", "drawer-open", "button-press-topdown", "door-open")

# The teacher's recipe and the distillation's: docs/demo.md, "Why the recipes".
TEACHER_RECIPE = (
    *("--first-step-weight", "8", "--shift", "0", "--aux-final-state", "1.0"),
    *("--ema-decay", "0.999", "--instruction-noise", "0.3"),
)
_DISTILL_COMMON = ("--target", "teacher", "--initial-state-share", "0.5", "--lr", "3e-4")
DISTILL_RECIPE = ("--w-ar", "0.1", *_DISTILL_COMMON)
# Planned ahead, a chunk starts from the state d ticks ahead and the image of d ticks before it: the
# full profile's teacher trains on that pairing and its collection decodes lagged frames (docs/demo.md,
# "Why the recipes"; the quick student lost with it).
OBS_LAG = ("--obs-lag-prob", "0.5", "--obs-lag-max-steps", "4")
# The quick profile's short distillation with the CE on the labels weighted 1: the student's greedy
# policy stays nearer the teacher's (docs/demo.md, "Why the recipes"). Half its initial states are
# the guess the one-forward (fused) pass decodes from, the teacher's own previous chunk collected
# with its own first token (FUSED_STATES).
QUICK_DISTILL_RECIPE = ("--w-ar", "1.0", *_DISTILL_COMMON, "--guess-state-share", "0.5")
FUSED_STATES = ("--warm-start-source", "teacher", "--fused-states")

# Why each value: docs/demo.md, "Why the profiles".
QUICK = DemoProfile(
    name="quick",
    tasks=QUICK_TASKS,
    record_episodes=30,
    record_noise=0.1,
    image_size=64,
    teacher_steps=1200,
    teacher_batch=32,
    collect_trajectories=1500,
    distill_steps=600,  # 0.64 against 0.56 for 300 and 0.60 for 1,200 on validation seeds (docs/demo.md)
    distill_batch=16,
    # 10 held-out episodes per task (50 a row) rather than 4, paid for by the rows the full profile
    # answers: exact Jacobi, sigma 1 in two passes, today's scheduling, the held-out wording
    eval_episodes=10,
    execute_steps=2,
    sigma=2,
    tau=None,
    sweep_sigmas=(),
    extra_train_args=TEACHER_RECIPE,
    extra_collect_args=FUSED_STATES,
    extra_distill_args=QUICK_DISTILL_RECIPE,
    # the student's delay curve at two delays, planned ahead; teacher AR's not at all
    student_delays=(2, 4),
    delay_schedulings=("plan_ahead",),
    heldout_wording_row=False,
    exact_rows=False,
)
# The full profile differs from the quick one in the data, the training lengths and the evaluation.
FULL = replace(
    QUICK,
    name="full",
    record_episodes=200,
    camera="corner2,gripperPOV",
    teacher_steps=3000,
    extra_train_args=(*TEACHER_RECIPE, *OBS_LAG),
    extra_collect_args=OBS_LAG,
    collect_trajectories=10000,
    distill_steps=3000,
    extra_distill_args=DISTILL_RECIPE,
    eval_episodes=20,
    sweep_sigmas=(1,),
    delay_schedulings=("today", "plan_ahead"),
    exact_rows=True,
    # within the 2.5-hour budget (docs/demo.md, "The delay curve"): the student planned ahead at every
    # d, teacher AR and today's scheduling at the two delays that bracket the real-time latency
    student_delays=(1, 2, 3, 4, 6),
    teacher_delays=(2, 4),
    today_delays=(2, 4),
    # at d = 3, 4, 6 the student's chunks run d steps open loop: decoded exact (docs/demo.md)
    student_exact_executed=True,
    heldout_wording_row=True,
)
PROFILES: dict[str, DemoProfile] = {p.name: p for p in (QUICK, FULL)}
