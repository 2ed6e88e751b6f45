#!/bin/sh
# secrets-init: the stacks' keys, one file each in the keys volume, so `up` needs no hand-written .env.
#
#   secrets-init.sh DIR NAME...
#
# For each NAME: a non-empty /run/secrets/NAME (the compose secret made from the user's own variable, e.g.
# LLAMACPP_API_KEY in stacks/.env) wins and is copied to DIR/NAME at every start, so changing it takes effect;
# otherwise a DIR/NAME kept from an earlier start stays; otherwise a random key is generated, once. The engine
# reads its file (llama-server --api-key-file), Open WebUI's start command reads its own. Keys are never printed.
# A NAME in SECRETS_REQUIRED (space-separated) is never generated: where the user gave none, secrets-init stops
# with one line (a cluster worker must hold the head's Ray token, not a new one).
set -eu

dir=$1
shift
given=${SECRETS_GIVEN_DIR:-/run/secrets}
# 0440: the engines' user (uid 10001, the files' owner) and group 10001 (Open WebUI's stack entry adds it) read them.
umask 0227

for name in "$@"; do
    tmp="$dir/.$name.tmp"
    rm -f "$tmp"  # left by a run killed half-way, and read-only
    if [ -s "$given/$name" ]; then
        cat "$given/$name" > "$tmp"
        how="set by the stack's settings"
    elif [ -s "$dir/$name" ]; then
        echo "secrets-init: $name: kept from an earlier start"
        continue
    elif case " ${SECRETS_REQUIRED:-} " in *" $name "*) true ;; *) false ;; esac; then
        echo "error: $name is not set: give this node the head's value (stacks/.env, see docs/clusters.md)" >&2
        exit 2
    else
        # 32 random bytes as 64 hex digits: od and tr are in every image with coreutils.
        printf '%s\n' "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" > "$tmp"
        how="generated"
    fi
    # A rename, so a consumer (or a kill half-way) never sees a half-written key.
    mv -f "$tmp" "$dir/$name"
    echo "secrets-init: $name: $how"
done
