# syntax=docker/dockerfile:1
#
# chime — one image, one binary (`chime`), a subcommand per role:
#   chime topics | ingest | engine | dispatcher | all | check
# Only `chime` is built (--bin chime): the measuring tool, chime-bench, and its
# plotting and progress-bar crates are not in the image (`chime bench` says so).
# Build:  docker build -t chime .
# Run:    docker run --rm -e CHIME_KAFKA_BOOTSTRAP=host:9092 -p 8080:8080 chime all
# See docker-compose.yml for Kafka plus every role as its own service.

# ---- build stage --------------------------------------------------------------
FROM rust:1-bookworm AS build

# rdkafka builds librdkafka from its bundled source (default features: no cmake,
# no system librdkafka): that needs a C toolchain, make, a POSIX shell for its
# mklove ./configure, pkg-config and zlib headers (libz-sys links the system zlib).
# cmake and python3 are not needed by the default build; they are here so the
# `cmake-build` feature, or a crate that wants them, also builds.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config python3 zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# BuildKit cache mounts keep the crates.io download and the target dir (with the
# compiled librdkafka, ~2 min) between builds. --locked: build exactly Cargo.lock.
# The binary is copied out because the cached target dir is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin chime \
 && cp target/release/chime /usr/local/bin/chime

# ---- runtime stage ------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: HTTPS callbacks; zlib1g: librdkafka's compression (usually
# present in slim already; listed so the dependency is explicit).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin chime

COPY --from=build /usr/local/bin/chime /usr/local/bin/chime

USER chime

# Inside a container the HTTP API must listen on all interfaces (the binary's
# default is loopback). Kafka's address has no sensible in-container default:
# set CHIME_KAFKA_BOOTSTRAP (docker-compose.yml sets kafka:9092).
ENV CHIME_LISTEN=0.0.0.0:8080
EXPOSE 8080

ENTRYPOINT ["chime"]
# Default role: everything in one process. Override with ingest|engine|dispatcher|topics.
CMD ["all"]
