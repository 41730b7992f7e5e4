# seedbed, CPU image: the API and workers with the sandbox or relay engines, PostgreSQL and S3
# support (docs/deploy.md). For GPU workers, build the CUDA variant described in docs/deploy.md.
#
#   docker build -t seedbed .
#   docker run --rm -p 8000:8000 seedbed serve          # embedded: SQLite in /var/lib/seedbed
#
# Settings come from SEEDBED_* variables (docs/cli.md); the container listens on 0.0.0.0:8000.

FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# A wheel of seedbed and of everything it needs, so the final stage installs offline.
RUN pip wheel --wheel-dir /wheels '.[postgres,s3]'

FROM python:3.12-slim
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SEEDBED_HOST=0.0.0.0 SEEDBED_PORT=8000 SEEDBED_DATA_DIR=/var/lib/seedbed \
    SEEDBED_LOG_JSON=true
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels 'seedbed[postgres,s3]' && rm -rf /wheels \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/seedbed seedbed
USER seedbed
WORKDIR /var/lib/seedbed
VOLUME ["/var/lib/seedbed"]
EXPOSE 8000
# /healthz answers once the process serves; /readyz also checks the store and storage.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
ENTRYPOINT ["seedbed"]
CMD ["serve"]
