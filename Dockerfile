# One image for the broker, the injector and the sidecar (`jitmesh broker|injector|sidecar`), for
# those with a container engine; `make image` builds the same without one (image/build.sh):
# the same lock, entrypoint and user, which tests/unit/test_image_recipes.py keeps in step.
# The sidecar's startupProbe runs python3 inside it, which this base image provides. OPA is
# there too: the broker builds the access proxies' policy as Wasm with it.
FROM python:3.11-slim
WORKDIR /src
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY pyproject.toml README.md ./
COPY jitmesh ./jitmesh
COPY pdp ./pdp
COPY injector ./injector
COPY sidecar ./sidecar
COPY proxy ./proxy
RUN pip install --no-cache-dir --no-deps . && rm -rf /src
COPY --from=openpolicyagent/opa:1.22.2-static /opa /usr/local/bin/opa
USER 65532:65532
ENTRYPOINT ["jitmesh"]
