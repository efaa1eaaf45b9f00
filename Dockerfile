# restcp in a container. Build: docker build -t restcp .
# Run:   docker run --network host -v restcp-data:/data restcp
# (host networking, because routes open ports at run time that a port map cannot know.)
FROM python:3.11-slim

RUN pip install --no-cache-dir uv
WORKDIR /opt/restcp
COPY pyproject.toml uv.lock README.md hatch_build.py ./
COPY src ./src
# gcc compiles the native relay engine (docs/engine.md) and is removed once it has.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && uv sync --frozen --no-dev \
    && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /data restcp && mkdir -p /data && chown restcp /data

USER restcp
ENV RESTCP_STORE=sqlite:////data/restcp.db \
    RESTCP_API=127.0.0.1:8001
VOLUME ["/data"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/restcp/.venv/bin/restcp"]
CMD ["serve"]
