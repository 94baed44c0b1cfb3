#!/bin/sh
# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
#
# Usage: registry-rollback-restore DIR
# Run by the role (tasks/rollback.yml, through ansible.builtin.script: not installed on the host) when a run broke the
# mirror. Puts back what registry-rollback-snapshot recorded in DIR: removes every listed path and what the run staged
# beside them, unpacks the files and the directories' owners and modes as they were, and removes the directories the
# run created if they are empty again. The cache's contents are never touched.
set -eu
if [ "$#" -ne 1 ]; then
    echo "usage: registry-rollback-restore DIR" >&2
    exit 64
fi
dir=$1
# What this run changed or added among the files, then what it staged beside them: gone.
cat "$dir/paths" "$dir/new-staged" | while IFS= read -r path; do
    case $path in /?*) rm -rf -- "$path" ;; esac
done
tar -C / --numeric-owner -xpf "$dir/files.tar"
tar -C / --numeric-owner -xpf "$dir/dirs.tar"
# Directories this run created, if nothing else is in them now.
while IFS= read -r path; do rmdir -- "$path" 2>/dev/null || true; done <"$dir/new-dirs"
