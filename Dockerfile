# The example stack as an image: supervisord as PID 1 in the foreground, the workers from
# example/docker/supervisord/tasks (PHP and Python), and the supervisor-listeners event listeners.
#   docker build -t supervisor-listeners-example .
#   docker run --rm -p 127.0.0.1:8080:8080 -p 127.0.0.1:9876:9876 \
#     -v sl-run:/app/example/docker/supervisord/run supervisor-listeners-example
# (docs/docker.md: the password, the volume, the ports; scripts/docker-local.sh builds it with
# no Docker engine or registry at hand.)
FROM python:3.11-slim-bookworm

# Inside the container's own network namespace the dashboard and the exporter listen on every
# interface, so that published ports reach them; publish them on the host's loopback only
# (-p 127.0.0.1:8080:8080). The dashboard still asks for its password.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SUPERVISOR_DASHBOARD_ADDRESS=0.0.0.0:8080 \
    EXPORTER_ADDRESS=0.0.0.0:9876 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# PHP for the workers (the seed's workload is PHP CLI workers), from Debian: bookworm's php-cli
# is PHP 8.2, which the pinned base decides, so the package is not pinned again here.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends php-cli \
 && rm -rf /var/lib/apt/lists/*

# One unprivileged user runs supervisord, its workers and the listeners, so the 0700 socket
# is reachable by all of them.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app

WORKDIR /src
COPY pyproject.toml README.md ./
COPY listeners ./listeners
# the project itself from the build context (its own pyproject pins the ranges); the example
# extra brings the catch-all SMTP server the example stack runs
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[example]" && rm -rf /src

WORKDIR /app
COPY --chown=app:app example/run.py ./example/run.py
COPY --chown=app:app example/docker/supervisord ./example/docker/supervisord

# Everything that must outlive the container is in run/: crashmail's outbox (alerts not yet
# delivered, and the keys of those that were, so a new container sends nothing twice), the
# alerts file, the made-up dashboard password, the logs. memmon keeps its restart budget in
# memory: a new container starts with a full one. Owned by app before VOLUME, so a new named
# volume starts out writable by the stack.
RUN mkdir -p example/docker/supervisord/run && chown app:app example/docker/supervisord/run
VOLUME ["/app/example/docker/supervisord/run"]

USER 10001:10001
EXPOSE 8080 9876

# Healthy means supervisord answers its listeners: the exporter, at $EXPORTER_ADDRESS, reports
# supervisord_up 1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "example/run.py", "healthcheck"]

ENTRYPOINT ["python3", "example/run.py"]
