# The `flashcart` command as a container image: what settlement.yaml runs (`flashcart settle`).
# From the repository root:
#   docker build -f infra/k8s/flashcart.Dockerfile -t ghcr.io/example/flashcart-cli:0.1.0 .
# The edge is NOT this image: it is the Spin app pushed as an OCI artifact
# (`spin build && spin registry push ...`, see docs/deploy.md).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The target dir inside the build stage (the repository's scripts put it outside the clone).
RUN CARGO_TARGET_DIR=/target cargo build --release --locked -p flashcart-cli

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /target/release/flashcart /usr/local/bin/flashcart
# settlement.yaml runs it as this (non-root) user, with a read-only root filesystem.
USER 65532:65532
ENTRYPOINT ["flashcart"]
