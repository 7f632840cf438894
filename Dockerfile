# taskenv's own image for compose.yaml (the API and the workers). Sandboxes use task images.
# Layers from the least to the most often changed: system packages, Python dependencies (from
# pyproject.toml only), then the source. `bench` is not shipped: it is a tool for a checkout.
# With no registry at hand, scripts/offline_image.py makes the base image from this machine's
# Debian packages and the wheels from .venv, then runs this same file.
ARG PYTHON_IMAGE=python:3.11-slim

# The dependency list alone: the layer that installs it is then rebuilt only when the list
# changes, not at every edit of pyproject.toml's other tables or of README.md.
FROM ${PYTHON_IMAGE} AS requirements
COPY pyproject.toml /tmp/
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt

FROM ${PYTHON_IMAGE}
# Extra pip options: the offline build's `--no-index --no-build-isolation` (its wheels come in .wheels/).
ARG PIP_OPTIONS=
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# busybox-static: the worker builds the default task image from it (`taskenv image build`).
RUN if [ ! -x /bin/busybox ]; then \
      apt-get update && apt-get install -y --no-install-recommends busybox-static \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && (getent passwd taskenv >/dev/null || useradd --system --uid 10001 --no-create-home --home-dir /app taskenv)
WORKDIR /app
COPY --from=requirements /tmp/requirements.txt /tmp/deps/
# .wheels/ exists only in offline builds (LICENSE is there for the pattern to match a file in
# any build); its wheels land beside requirements.txt.
COPY LICENSE .wheel[s] /tmp/deps/
RUN python3 -m pip install $PIP_OPTIONS --find-links /tmp/deps -r /tmp/deps/requirements.txt \
    && rm -rf /tmp/deps
COPY pyproject.toml README.md LICENSE ./
COPY shared shared
COPY api api
COPY worker worker
COPY cli cli
COPY taskenv taskenv
# The in-sandbox runner (runner/PROTOCOL.md), built static on the host by scripts/install.sh;
# a context without it gives workers that use docker exec (they log it).
COPY runner/PROTOCOL.md runner/build/taskenv-runne[r] /usr/local/lib/taskenv/
ENV TASKENV_RUNNER_BINARY=/usr/local/lib/taskenv/taskenv-runner
COPY bench/__init__.py bench/__init__.py
RUN python3 -m pip install $PIP_OPTIONS --no-deps . && rm -rf build *.egg-info
# The API and the healthchecks run unprivileged; compose.yaml runs the worker as root, for it
# holds the Docker socket (root on the host in any case) and kills sandboxes' process groups.
USER taskenv
ENTRYPOINT ["taskenv"]
