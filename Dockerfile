# taskenv's own image for compose.yaml (the API and the workers). Sandboxes use task images.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends busybox-static && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api api
COPY worker worker
COPY shared shared
COPY cli cli
COPY bench bench
RUN pip install --no-cache-dir .
ENTRYPOINT ["taskenv"]
