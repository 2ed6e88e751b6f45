#!/bin/sh
# Refresh the committed renders: images/<engine>/<target>.Dockerfile, one per catalog target, at its default
# options. Compose `build:` sections (stacks/) need a Dockerfile on disk; tests/unit/test_stacks.py fails when
# one is stale. Run after editing a template or image.yaml:  sh images/render-dockerfiles.sh
set -eu
cd "$(dirname "$0")/.."
builder=${BUILDER:-builder}
command -v "$builder" >/dev/null 2>&1 || builder="python3 -m builder.cli"
$builder list --json | python3 -c 'import json, sys
for t in json.load(sys.stdin):
    print(t["name"], t["folder"])' | while read -r target folder; do
    $builder render "$target" > "$folder/$target.Dockerfile"
    echo "$folder/$target.Dockerfile"
done
