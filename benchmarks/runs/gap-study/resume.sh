#!/usr/bin/env bash
# The expertise-gap study's remaining jobs (issue 16), in order, each resumable: run it again after any stop.
#   nohup bash benchmarks/runs/gap-study/resume.sh >> /work/study.log 2>&1 &
# Its stages run from a git worktree pinned at 23299d0 (the stage code of fb865ea, which made every earlier arm), so
# edits to this checkout cannot change a job mid-run. The folders it writes live here, beside recorded.json, and are
# committed at each session's end: session 15 began on a new machine that had lost /work/runs, the old root.
# Stop it cleanly (written records kept): pkill -f resume.sh; pkill -TERM -f "gap_study.py run"; pkill -TERM -f "lightreasoner (sample|train|eval)"
set -euo pipefail
ROOT=$(cd "$(dirname "$0")" && pwd)
WT=${STUDY_WORKTREE:-/work/wt-study}
[ -d "$WT" ] || git -C "$ROOT" worktree add -q "$WT" 23299d0
cd "$WT"
for job in "sample coder-1.5b__self__embedded" "train coder-1.5b__self__embedded" \
           "eval qwen2.5-coder-1.5b-instruct" "eval coder-1.5b__self__embedded" \
           "sample coder-1.5b__coder-0.5b__paper" "train coder-1.5b__coder-0.5b__paper" \
           "eval coder-1.5b__coder-0.5b__paper" \
           "eval self-layer qwen2.5-coder-0.5b" "eval self-layer qwen2.5-coder-1.5b"; do
  PYTHONPATH=src nice -n 5 python benchmarks/gap_study.py run --root "$ROOT" --only "$job"
done
