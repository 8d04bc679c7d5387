# Sourced by launch/*.sh and slurm/common.sh: the interpreter and the overrides every launcher adds.
# shellcheck shell=bash

# The repository's .venv when there is one, so that torchrun and the workers use the same Python.
swinv2_python() {
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if [[ -n ${PYTHON:-} ]]; then
        echo "$PYTHON"
    elif [[ -x $repo/.venv/bin/python ]]; then
        echo "$repo/.venv/bin/python"
    else
        echo python3
    fi
}

# Prints the Hydra overrides "$@" plus resume=auto unless one of them sets resume already: a
# restarted worker group (torchrun --max-restarts, a requeued Slurm job) must continue from the
# newest checkpoint of its run directory instead of refusing to reuse it. One override per line.
swinv2_overrides() {
    local arg resume=0
    for arg in "$@"; do
        [[ $arg == resume=* ]] && resume=1
        printf '%s\n' "$arg"
    done
    if [[ $resume -eq 0 ]]; then
        echo resume=auto
    fi
}
