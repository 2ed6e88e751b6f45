#!/bin/bash
# open-webui-start: Open WebUI's own start command (upstream's CMD, `bash start.sh` in /app/backend) with the stack's
# keys read from the keys volume, the one start every stack's open-webui runs (stacks/shared/services.yml).
#
# Open WebUI 0.12.4 takes WEBUI_SECRET_KEY and OPENAI_API_KEY from its environment only (os.getenv, no *_FILE form);
# set under a service's environment: they would show in `docker inspect`, so they are exported here instead. Its
# start.sh generates a secret key only when none is given, into the container's layer, which `down` loses.
#
# R1KIT_OPENAI_API_KEY_FILE: the engine's key file (the one the engine itself reads); unset where the engine has no
# key (Ollama). R1KIT_WEBUI_SECRET_KEY_FILE exists for the tests only.
# A missing key file stops the start (set -e) rather than starting Open WebUI without its key.
set -eu

WEBUI_SECRET_KEY=$(cat "${R1KIT_WEBUI_SECRET_KEY_FILE:-/run/r1kit/keys/webui_secret_key}")
export WEBUI_SECRET_KEY
if [ -n "${R1KIT_OPENAI_API_KEY_FILE:-}" ]; then
    OPENAI_API_KEY=$(cat "$R1KIT_OPENAI_API_KEY_FILE")
    export OPENAI_API_KEY
fi
exec bash start.sh
