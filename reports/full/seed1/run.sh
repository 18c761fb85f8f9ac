#!/usr/bin/env bash
# The full profile's teacher and student on 50 other held-out episodes (run seed 1; the demo uses 0).
# Run from the repo root after `make demo PROFILE=full`; each report.md here was written by one line.
set -e
export MUJOCO_GL=egl HF_HUB_OFFLINE=1
T=outputs/demo/full/teacher/run/final; S=outputs/demo/full/distill/run/final
S2=outputs/demo/full/distill_r2/run/final   # the second distillation round (the profile's student now)
common="--tasks reach,push,drawer-open,button-press-topdown,door-open --episodes 10 --image-size 64 --seed 1 --instructions train --clock paused"
.venv/bin/ceed eval --policy $T $common --decoding ar --output runs/seed1/teacher_ar
.venv/bin/ceed eval --policy $S $common --decoding jacobi --output runs/seed1/student_jacobi
.venv/bin/ceed eval --policy $S $common --decoding early_exit --sigma 3 --output runs/seed1/student_sigma3
.venv/bin/ceed eval --policy $S $common --decoding early_exit --sigma 1 --output runs/seed1/student_sigma1
.venv/bin/ceed eval --policy $T $common --decoding jacobi --output runs/seed1/teacher_jacobi
.venv/bin/ceed eval --policy $S2 $common --decoding jacobi --output runs/seed1/student_r2_jacobi
.venv/bin/ceed eval --policy $S2 $common --decoding early_exit --sigma 1 --output runs/seed1/student_r2_sigma1
