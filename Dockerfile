# One image for every Weft binary: weft-operator, weft-agent, weft-cni and weftctl.
# The agent's DaemonSet copies weft-cni onto the node from this image.

FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && for b in weft-operator weft-agent weft-cni weftctl; do \
      if [ -x "target/release/$b" ]; then cp "target/release/$b" /out/; fi; \
    done

FROM docker.io/library/debian:bookworm-slim
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
USER 0
ENTRYPOINT ["/usr/local/bin/weft-operator"]
