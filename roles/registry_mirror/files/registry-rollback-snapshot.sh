#!/bin/sh
# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
#
# Usage: registry-rollback-snapshot DIR [PATH...] [--dirs DIR...] [--staged PATH...]
# Run by the role (tasks/snapshot.yml, through ansible.builtin.script: not installed on the host) before a run changes
# the host. Records in DIR, root-only, what the run may change, so that registry-rollback-restore can put it back:
#   PATH...           files, links and directories the role owns entirely: the list (DIR/paths), and those present
#                     (DIR/present) archived with their contents (DIR/files.tar);
#   --dirs DIR...     directories whose owner and mode are recorded without their contents (DIR/dirs, DIR/dirs.tar),
#                     or, when absent, listed as new (DIR/new-dirs);
#   --staged PATH...  what a run adds beside the live files: listed when absent (DIR/new-staged).
# Absolute paths only; the archives hold them relative to /. Each file of DIR is replaced only once the whole snapshot
# is written. Writes nothing else.
set -eu
if [ "$#" -lt 1 ]; then
    echo "usage: registry-rollback-snapshot DIR [PATH...] [--dirs DIR...] [--staged PATH...]" >&2
    exit 64
fi
umask 077
dir=$1
shift
mkdir -p "$dir"
lists="paths present dirs new-dirs new-staged"
for name in $lists; do : >"$dir/$name.new"; done
list=paths
for path; do
    case $path in --dirs | --staged) list=${path#--}; continue ;; esac
    if [ -e "$path" ] || [ -L "$path" ]; then there=yes; else there=no; fi
    case $list/$there in
        paths/*) printf '%s\n' "$path" >>"$dir/paths.new"
                 if [ "$there" = yes ]; then printf '%s\n' "${path#/}" >>"$dir/present.new"; fi ;;
        dirs/yes) if [ -d "$path" ] && [ ! -L "$path" ]; then printf '%s\n' "${path#/}" >>"$dir/dirs.new"; fi ;;
        dirs/no) printf '%s\n' "$path" >>"$dir/new-dirs.new" ;;
        staged/no) printf '%s\n' "$path" >>"$dir/new-staged.new" ;;
    esac
done
tar -C / --numeric-owner -cf "$dir/files.tar.new" -T "$dir/present.new"
tar -C / --numeric-owner --no-recursion -cf "$dir/dirs.tar.new" -T "$dir/dirs.new"
for name in $lists files.tar dirs.tar; do mv -f "$dir/$name.new" "$dir/$name"; done
