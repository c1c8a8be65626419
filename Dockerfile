# The example stack as an image: supervisord as PID 1 in the foreground, the workers from
# example/docker/supervisord/tasks, and the supervisor-listeners event listeners.
#   docker build -t supervisor-listeners-example .
#   docker run --rm -p 127.0.0.1:8080:8080 -p 127.0.0.1:9876:9876 \
#     -e SUPERVISOR_DASHBOARD_PASSWORD=... supervisor-listeners-example
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
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

# The dashboard and the exporter listen on 127.0.0.1 in the shipped conf; inside a container
# publish them with `-p 127.0.0.1:...` and set the listen addresses to 0.0.0.0 in your own conf.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9876/healthz', timeout=4)"]

ENTRYPOINT ["python3", "example/run.py"]
