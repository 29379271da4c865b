# One image for the broker, the injector and the sidecar (`jitmesh broker|injector|sidecar`).
# The sidecar's startupProbe runs python3 inside it, which this base image provides.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY jitmesh ./jitmesh
COPY pdp ./pdp
COPY injector ./injector
COPY sidecar ./sidecar
RUN pip install --no-cache-dir . && rm -rf /src
USER 65532:65532
ENTRYPOINT ["jitmesh"]
