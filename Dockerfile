# One image for the broker, the injector and the sidecar (`jitmesh broker|injector|sidecar`), for
# those with a container engine; `make image` builds the same without one (image/build.sh):
# the same lock, entrypoint and user, which tests/unit/test_image_recipes.py keeps in step.
# The sidecar's startupProbe runs python3 inside it, which this base image provides.
FROM python:3.11-slim
WORKDIR /src
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY pyproject.toml README.md ./
COPY jitmesh ./jitmesh
COPY pdp ./pdp
COPY injector ./injector
COPY sidecar ./sidecar
RUN pip install --no-cache-dir --no-deps . && rm -rf /src
USER 65532:65532
ENTRYPOINT ["jitmesh"]
