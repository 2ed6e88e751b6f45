# llama.cpp for CPUs: llama-server and its tools.
# Rendered from images/llamacpp/Dockerfile.j2 by `builder render llamacpp-cpu`: edit the template, not this file.
#
# Build args (each has a default; tests and air-gapped users point them elsewhere):
#   LLAMACPP_VERSION  release tag to fetch          LLAMACPP_SOURCE  github | local (a source/ folder in the context)
#   CPU_TARGET        portable (every CPU variant, chosen at run time) | native (-march=native of the build host)
#   BUILD_IMAGE, RUNTIME_IMAGE

ARG LLAMACPP_VERSION=b10864
ARG LLAMACPP_SOURCE=github
ARG BUILD_IMAGE=debian:bookworm-slim
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS toolchain
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=cache,id=apt-cache-cpu,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,id=apt-lists-cpu,target=/var/lib/apt/lists,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
    && apt-get update \
    && apt-get install -y --no-install-recommends build-essential ca-certificates ccache cmake curl libssl-dev \
        python3 python3-numpy python3-yaml

FROM toolchain AS source-github
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG LLAMACPP_VERSION
WORKDIR /src/llama.cpp
RUN curl -fsSL "https://github.com/ggml-org/llama.cpp/archive/refs/tags/${LLAMACPP_VERSION}.tar.gz" \
    | tar -xz --strip-components=1

FROM toolchain AS source-local
COPY source/ /src/llama.cpp/

# BuildKit builds only the stage that LLAMACPP_SOURCE names.
FROM source-${LLAMACPP_SOURCE} AS source

FROM source AS build
# portable: every CPU kernel variant, the fastest picked at run time; native: -march=native, this host only.
ARG CPU_TARGET=portable
# build.sh compiles; cpu-variants.c and tiny_gguf.py make what the entrypoint picks the CPU kernels with.
COPY build.sh cpu-variants.c tiny_gguf.py /usr/local/share/r1kit-build/
# ccache lives in a BuildKit cache mount: a rebuild after a small change recompiles only what changed.
RUN --mount=type=cache,id=ccache-llamacpp-cpu,target=/root/.cache/ccache \
    CCACHE_DIR=/root/.cache/ccache ACCELERATOR=cpu BLAS=none CPU_TARGET="${CPU_TARGET}" \
    bash /usr/local/share/r1kit-build/build.sh /src/llama.cpp /opt/llama.cpp

FROM ${RUNTIME_IMAGE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
# The last line strips every setuid and setgid bit (su, mount, passwd, ...): no file here can raise privileges.
RUN --mount=type=cache,id=apt-cache-cpu,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,id=apt-lists-cpu,target=/var/lib/apt/lists,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
    && apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl libgomp1 \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/llama llama \
    && install -d -o llama -g llama /models \
    && find / -xdev -type f -perm /6000 -exec chmod ug-s {} +
# bin/: the tools and ggml; lib/ggml-cpu/: the CPU kernel variants; share/r1kit/: the CPU probe's model.
COPY --from=build /opt/llama.cpp /opt/llama.cpp
# llama-server after choosing the CPU kernels that run here, reading the model's path from LLAMA_MODEL_PATH_FILE
# where LLAMA_ARG_MODEL is unset (the stacks).
COPY entrypoint.sh /usr/local/bin/r1kit-entrypoint

ENV PATH=/opt/llama.cpp/bin:$PATH \
    LLAMA_CACHE=/home/llama/.cache/llama.cpp \
    LLAMA_ARG_HOST=0.0.0.0 \
    LLAMA_ARG_PORT=8080
USER 10001:10001
WORKDIR /models
EXPOSE 8080
# /health answers 503 while the model loads and 200 once it serves; it needs no API key.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10m --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS http://127.0.0.1:${LLAMA_ARG_PORT}/health || exit 1"]
ENTRYPOINT ["r1kit-entrypoint"]

ARG LLAMACPP_VERSION
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="llamacpp-cpu" \
      org.opencontainers.image.description="llama.cpp server and tools for DeepSeek-R1 GGUF models on CPUs" \
      org.opencontainers.image.source="https://github.com/r1kit/r1kit" \
      org.opencontainers.image.url="https://github.com/ggml-org/llama.cpp" \
      org.opencontainers.image.version="${LLAMACPP_VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="MIT"
