#!/usr/bin/env bash
# Run one experiment locally: launch/local.sh configs/orl_opqn.py[:ARGS] [--config.x=y ...]
# The workdir is workdirs/<config name>; rerunning the same command resumes from it.
set -euo pipefail
config="$1"; shift
name="$(basename "${config%%:*}" .py)"
args="${config#*:}"; [ "$args" = "$config" ] && args="" || args="_${args//[,=]/_}"
exec dpq-train --config="$config" --workdir="workdirs/${name}${args}" "$@"
