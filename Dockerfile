# The example stack as an image: supervisord as PID 1 in the foreground, the workers from
# example/docker/supervisord/tasks, and the supervisor-listeners event listeners.
#   docker build -t supervisor-listeners-example .
#   docker run --rm -p 127.0.0.1:8080:8080 -p 127.0.0.1:9876:9876 \
#     -e SUPERVISOR_DASHBOARD_PASSWORD=... supervisor-listeners-example
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

# One unprivileged user runs supervisord, its workers and the listeners, so the 0700 socket
# is reachable by all of them.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app

WORKDIR /src
COPY pyproject.toml README.md ./
COPY listeners ./listeners
RUN pip install --no-cache-dir . && rm -rf /src

WORKDIR /app
COPY --chown=app:app example/run.py ./example/run.py
COPY --chown=app:app example/docker/supervisord ./example/docker/supervisord

USER 10001:10001
EXPOSE 8080 9876

# Healthy means supervisord answers its listeners: the exporter reports supervisord_up 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python3", "-c", "import sys, urllib.request; body = urllib.request.urlopen('http://127.0.0.1:9876/metrics', timeout=4).read(); sys.exit(0 if b'supervisord_up 1' in body else 1)"]

ENTRYPOINT ["python3", "example/run.py"]
