# hotserve as a container: slim Python, installed with pip against constraints.txt (the
# versions the test suite passed with, as the README installs it), run as a non-root user.
#   docker build -t hotserve:0.1.0 .
#   docker run --rm -p 8501:8501 -p 8500:8500 -v /srv/models:/models:ro hotserve:0.1.0 \
#       serve --model_name=mlp --model_base_path=/models/mlp
# deploy/kubernetes/deployment.yaml runs it with a read-only root filesystem (only /tmp is
# writable there), which is why bytecode is not written at run time.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/hotserve
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
# A regular (not editable) install into a virtualenv, with the fleet extra (ZooKeeper client).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c constraints.txt '.[fleet]' \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin hotserve

ENV PATH=/opt/venv/bin:$PATH
USER 10001:10001
EXPOSE 8501 8500
HEALTHCHECK --interval=10s --timeout=3s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/healthz', timeout=2)"]
ENTRYPOINT ["hotserve"]
CMD ["serve", "--model_config_file=/etc/hotserve/models.yaml"]
