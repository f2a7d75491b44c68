# syntax=docker/dockerfile:1.7
# Targets:
#   operator       the kopf operator, no torch            docker build --target operator -t abtest/operator .
#   evaluator      model and analysis Jobs, CUDA torch    docker build --target evaluator -t abtest/evaluator .
#   evaluator-cpu  CPU-only torch, for kind/CPU clusters  docker build --target evaluator-cpu -t abtest/evaluator:cpu .
# The install steps live in hack/image-install.sh, which CI runs too. Every image runs as UID 65532.
# Without Docker (and without a registry to pull the base from), hack/build-images.sh builds these
# targets with buildah from a debootstrapped base passed as PYTHON_IMAGE; the e2e tests run them.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
# Where evaluator-cpu takes torch: PyTorch's CPU-only index (small); any PEP 503 index or mirror works.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Optional, for pip behind a TLS-inspecting proxy: the path of a CA bundle mounted into the build.
ARG PIP_CERT

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY operator/ operator/
COPY evaluator/ evaluator/
COPY crds/ crds/
COPY hack/image-install.sh hack/

FROM build AS build-operator
ARG TORCH_INDEX_URL PIP_CERT
RUN bash hack/image-install.sh operator /opt/abtest /src

FROM build AS build-evaluator
ARG TORCH_INDEX_URL PIP_CERT
RUN bash hack/image-install.sh evaluator /opt/abtest /src

FROM build AS build-evaluator-cpu
ARG TORCH_INDEX_URL PIP_CERT
RUN bash hack/image-install.sh evaluator-cpu /opt/abtest /src

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/abtest/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
RUN groupadd --gid 65532 abtest && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin abtest
USER 65532:65532
ENTRYPOINT ["abtest"]

FROM runtime AS operator
COPY --from=build-operator /opt/abtest /opt/abtest
CMD ["operator"]

FROM runtime AS evaluator-cpu
COPY --from=build-evaluator-cpu /opt/abtest /opt/abtest
CMD ["--help"]

# Last, so a plain `docker build .` gives the GPU evaluator.
FROM runtime AS evaluator
COPY --from=build-evaluator /opt/abtest /opt/abtest
CMD ["--help"]
