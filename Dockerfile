# restcp in a container. Build: docker build -t restcp .
# Run:   docker run --network host -v restcp-data:/data restcp
# (host networking, because routes open ports at run time that a port map cannot know.)
FROM python:3.11-slim

RUN pip install --no-cache-dir uv
WORKDIR /opt/restcp
COPY pyproject.toml uv.lock README.md ./
COPY src ./src
RUN uv sync --frozen --no-dev && useradd --system --home /data restcp && mkdir -p /data \
    && chown restcp /data

USER restcp
ENV RESTCP_STORE=sqlite:////data/restcp.db \
    RESTCP_API=127.0.0.1:8001
VOLUME ["/data"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/restcp/.venv/bin/restcp"]
CMD ["serve"]
