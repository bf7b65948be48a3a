# The Distillery image: the `distillery` CLI (workers, simulator, metrics, migrations, submit)
# and Celery/Flower, on python:3.11-slim, running as an unprivileged user.
#   docker build -t distillery .        (docker-compose.yml builds it for every app service)
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: the project and its dependencies in a virtualenv ----------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Dependencies first, read from pyproject.toml, in a layer of their own: editing the source
# then rebuilds only the small layer below, not scikit-learn and friends.
COPY pyproject.toml /src/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
# The whole build context (.dockerignore keeps out tests, caches and local files), so a new
# package or data file needs no edit here.
COPY . /src
RUN pip install --no-deps /src

# --- runtime: the virtualenv only, no build tools, no source tree -----------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/venv /opt/venv
# /data/distillery-output exists, owned by the app user, before a named volume is mounted on
# it: Docker then gives the new volume that owner, and the reducer can write training files.
RUN useradd --uid 10001 --create-home --home-dir /home/distillery distillery \
    && mkdir -p /data/distillery-output \
    && chown -R distillery:distillery /data
USER 10001
WORKDIR /data
ENTRYPOINT ["distillery"]
CMD ["--help"]
