#!/bin/sh
# The vLLM image's entrypoint: `vllm serve` with every argument passed on (`docker run IMAGE MODEL --flag ...`),
# after the checks in preflight.py (bad settings, the memory estimate) have passed; a refusal is one `error:` line
# and exit status 2, before the engine loads anything.
#
# The API key: where VLLM_API_KEY_FILE names a file, its first line becomes VLLM_API_KEY, which vLLM reads as its
# --api-key; the key never appears on a command line (`ps`), in `docker inspect` or in compose's output.
# vLLM itself checks that key on /v1, /v2, /inference and /cohere only: with a key set, vLLM also loads
# r1kit_keyguard.py (its --middleware option), which asks for it on every route but GET/HEAD /health.
# Any other vllm command: `docker run --entrypoint vllm IMAGE --version`.
set -eu

if [ -n "${VLLM_API_KEY_FILE:-}" ]; then
    if [ ! -r "$VLLM_API_KEY_FILE" ]; then
        echo "error: VLLM_API_KEY_FILE=$VLLM_API_KEY_FILE is not a readable file: mount the key file there (the stacks' keys volume)" >&2
        exit 2
    fi
    VLLM_API_KEY=$(head -n 1 "$VLLM_API_KEY_FILE")
    if [ -z "$VLLM_API_KEY" ]; then
        echo "error: $VLLM_API_KEY_FILE is empty: the stack's secrets-init writes the key there" >&2
        exit 2
    fi
    export VLLM_API_KEY
fi

# R1KIT_HOME: the scripts' folder (the image sets it; a bare-metal install of the same layout may put it elsewhere).
python3 "${R1KIT_HOME:-/opt/r1kit}/preflight.py" "$@"
if [ -n "${VLLM_API_KEY:-}" ]; then
    export PYTHONPATH="${R1KIT_HOME:-/opt/r1kit}/python${PYTHONPATH:+:$PYTHONPATH}"
    exec vllm serve "$@" --middleware r1kit_keyguard.KeyOnEveryRoute
fi
exec vllm serve "$@"
