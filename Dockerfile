# One image for Weft's binaries (weft-operator, weft-agent, weftctl and weft-cni, which the
# agent's DaemonSet copies onto the node with cni/10-weft.conflist). The operator's Deployment
# runs the default entrypoint; the agent's DaemonSet sets `command: [weft-agent]`.

FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The binaries the workspace builds today; a missing one fails the build rather than
# shipping an image without it.
ARG BINARIES="weft-operator weft-agent weftctl weft-cni"
RUN cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && for b in $BINARIES; do cp "target/release/$b" /out/; done

FROM docker.io/library/debian:bookworm-slim
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
COPY --from=build /src/cni/10-weft.conflist /usr/local/share/weft/10-weft.conflist
USER 0
ENTRYPOINT ["/usr/local/bin/weft-operator"]
