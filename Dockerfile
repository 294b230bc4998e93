# fasterrcnn on the CPU. Build: docker build -t fasterrcnn:cpu .   (see docs/containers.md)
# The environment is made by the Makefile's `venv-runtime` target (the package and its runtime dependencies,
# no test or docs extras), the same step as `make demo`.
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . .
# The Makefile's torch pin, looked up in PyTorch's CPU wheel index (PyPI's Linux wheel is the CUDA build).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN make venv-runtime TORCH_INDEX=${TORCH_INDEX}

ENV PATH=/app/.venv/bin:$PATH
ENTRYPOINT ["fasterrcnn"]
CMD ["--help"]
