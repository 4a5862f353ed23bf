# mflow in a container, for a NAS (Synology, Unraid, fnOS, OpenMediaVault). Nothing is downloaded: the
# image is the static binary, which carries its own CA certificates and time zones. Build it first:
#
#   CGO_ENABLED=0 go build -trimpath -o mflow ./cmd/mflow
#   docker build -t mflow .        (or podman build --format docker, to keep the health check)
#
# Settings are flags after the image's name, or MFLOW_* variables (MFLOW_RPC_SECRET for --rpc-secret).
# Players reach the container through a published port, so the JSON-RPC needs MFLOW_RPC_SECRET: without
# one it answers only the container's own loopback. See compose.yaml.
FROM scratch
COPY mflow /mflow
# The two volumes, made here so they belong to mflow's user: tasks in /data, the disk cache in /cache.
COPY --chown=65532:65532 contrib/container/volume/ /data/
COPY --chown=65532:65532 contrib/container/volume/ /cache/
USER 65532:65532
# The folders systemd gives a service, which mflow reads when no setting names one: tasks and an optional
# mflow.conf in /data, the disk cache in /cache (MFLOW_CACHE_DIR= turns it off).
ENV MFLOW_PORT=6800 STATE_DIRECTORY=/data CONFIGURATION_DIRECTORY=/data CACHE_DIRECTORY=/cache HOME=/data
VOLUME ["/data", "/cache"]
EXPOSE 6800
HEALTHCHECK --interval=30s --timeout=6s --start-period=5s CMD ["/mflow", "health"]
ENTRYPOINT ["/mflow"]
