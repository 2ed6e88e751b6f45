#!/bin/sh
# The llama.cpp images' entrypoint: llama-server with every argument passed through.
#
# A split GGUF loads only given its first shard's real name (NAME-00001-of-0000N.gguf), which a compose file
# cannot know from the model's name alone. The stacks' model-init writes the path it downloaded to a pointer
# file; when LLAMA_ARG_MODEL is unset and LLAMA_MODEL_PATH_FILE names a readable file, its first line becomes
# LLAMA_ARG_MODEL. An explicit LLAMA_ARG_MODEL, or -m in the arguments, wins.
#
# An empty LLAMA_ARG_* counts as unset: compose passes every setting (`${LLAMACPP_TENSOR_SPLIT:-}`), and
# llama-server would otherwise parse "" as a value (and fail on -ts, -ncmoe, ...).
set -eu

for name in $(env | sed -n 's/^\(LLAMA_ARG_[A-Z0-9_]*\)=$/\1/p'); do
    unset "$name"
done

if [ -z "${LLAMA_ARG_MODEL:-}" ] && [ -n "${LLAMA_MODEL_PATH_FILE:-}" ]; then
    if [ ! -r "$LLAMA_MODEL_PATH_FILE" ]; then
        echo "r1kit-entrypoint: LLAMA_MODEL_PATH_FILE=$LLAMA_MODEL_PATH_FILE is not a readable file" >&2
        exit 1
    fi
    IFS= read -r LLAMA_ARG_MODEL < "$LLAMA_MODEL_PATH_FILE" || true  # a last line without a newline still reads
    if [ -z "$LLAMA_ARG_MODEL" ]; then
        echo "r1kit-entrypoint: $LLAMA_MODEL_PATH_FILE is empty" >&2
        exit 1
    fi
    export LLAMA_ARG_MODEL
    echo "r1kit-entrypoint: model $LLAMA_ARG_MODEL (from $LLAMA_MODEL_PATH_FILE)" >&2
fi

exec llama-server "$@"
