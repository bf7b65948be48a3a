FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY models models
COPY workers workers
COPY producer producer
COPY simulator simulator
RUN pip install --no-cache-dir .
# Run as an unprivileged user; the SQLite default and training files go under /data.
RUN useradd --create-home distillery && mkdir /data && chown distillery /data
USER distillery
WORKDIR /data
ENTRYPOINT ["distillery"]
CMD ["--help"]
