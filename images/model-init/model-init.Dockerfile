# model-init: fetches a model into a volume before the engine starts (`builder download`), then exits.
# Rendered from images/model-init/Dockerfile.j2 by `builder render model-init`: edit the template, not this file.
#
# Build args (each has a default; tests and air-gapped users point them elsewhere):
#   BASE_IMAGE      debian:bookworm-slim
#   LLAMACPP_IMAGE  the llama.cpp image that llama-gguf-split comes from
#   PIP_SOURCE      pypi (the builder package's dependencies from PyPI) | local (a wheelhouse in source/, made with
#                   `pip wheel` and staged by `builder build model-init --source DIR`)

ARG BASE_IMAGE=debian:bookworm-slim
ARG LLAMACPP_IMAGE=ghcr.io/r1kit/llamacpp-cpu:b10864
ARG PIP_SOURCE=pypi

# llama-gguf-split, for `--merge`, and the shared libraries it links (they sit beside it, found through $ORIGIN).
FROM ${LLAMACPP_IMAGE} AS llamacpp

FROM ${BASE_IMAGE} AS toolchain
ARG DEBIAN_FRONTEND=noninteractive
RUN --mount=type=cache,id=apt-cache-model-init,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,id=apt-lists-model-init,target=/var/lib/apt/lists,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
    && apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv

FROM toolchain AS pip-pypi
ENV PIP_OFFLINE=""
RUN mkdir -p /wheels

FROM toolchain AS pip-local
ENV PIP_OFFLINE=--no-index
COPY source/ /wheels/

# BuildKit builds only the stage that PIP_SOURCE names.
FROM pip-${PIP_SOURCE} AS build
COPY pyproject.toml README.md /src/
COPY builder/ /src/builder/
# PIP_OFFLINE is empty (PyPI) or --no-index (the wheelhouse only): unquoted on purpose.
# hadolint ignore=SC2086
RUN python3 -m venv /opt/r1kit \
    && /opt/r1kit/bin/pip install --no-cache-dir --disable-pip-version-check ${PIP_OFFLINE} --find-links /wheels /src

FROM ${BASE_IMAGE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
# The last line strips every setuid and setgid bit (su, mount, passwd, ...): no file here can raise privileges.
RUN --mount=type=cache,id=apt-cache-model-init,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,id=apt-lists-model-init,target=/var/lib/apt/lists,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
    && apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libgomp1 python3 \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/r1kit r1kit \
    && install -d -o 10001 -g 10001 /models \
    && find / -xdev -type f -perm /6000 -exec chmod ug-s {} +
COPY --from=build /opt/r1kit /opt/r1kit
COPY --from=llamacpp /opt/llama.cpp/bin/llama-gguf-split /opt/llama.cpp/bin/lib*.so* /opt/llama.cpp/bin/

# uid 10001 is the llama.cpp image's user: files it writes are the engine's own. HF_HOME must be writable
# (huggingface_hub keeps small state there); the token comes from HF_TOKEN or a secret file (HF_TOKEN_PATH,
# by default /run/secrets/hf_token when it exists), never from an image layer.
ENV PATH=/opt/r1kit/bin:/opt/llama.cpp/bin:$PATH \
    HF_HOME=/home/r1kit/.cache/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    BUILDER_MODELS_DIR=/models \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /models
VOLUME ["/models"]
# umask 0022: every file and folder it writes is readable by the engines' users, whatever their uid.
ENTRYPOINT ["/bin/sh", "-c", "umask 0022 && exec builder download \"$@\"", "builder-download"]

ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="model-init" \
      org.opencontainers.image.description="Fetches a DeepSeek-R1 model into a volume before the engine starts" \
      org.opencontainers.image.source="https://github.com/r1kit/r1kit" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="MIT"
