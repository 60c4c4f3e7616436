# syntax=docker/dockerfile:1
#
# scan-gateway container image.
#
# NOTE: no Docker engine runs on this project's machines or in its CI, so this image is NOT
# built or run in CI. scripts/check-chart.sh lints this file (hadolint, checkov); build and
# smoke-test it where a BuildKit engine is available:
#
#   docker build -t registry.example.com/scan-gateway:0.1.0 .
#   docker run --rm registry.example.com/scan-gateway:0.1.0 serve --help
#
# Runtime base: gcr.io/distroless/cc-debian12:nonroot, because the binary is dynamically linked
# against glibc and libgcc_s (Rust's default target, x86_64-unknown-linux-gnu) and needs nothing
# else: TLS is rustls with aws-lc-rs compiled into the binary (no OpenSSL), and reqwest reads the
# system trust store, /etc/ssl/certs/ca-certificates.crt, which this base ships. It has no shell
# and no package manager, runs as uid/gid 65532 ("nonroot"), and its glibc (Debian 12) is the
# one the builder links against. debian:bookworm-slim would work too but adds a shell, apt and
# ~70 MB for nothing the gateway uses.
# For reproducible releases pin both base images by digest (e.g. with Renovate).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Only what the build reads (see .dockerignore): the manifest, the lockfile, the build script
# (it compiles proto/ with protox, pure Rust: no protoc needed), the sources and the workspace's
# member crates (the simulator and the clock; cargo reads every member's manifest).
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY crates ./crates
# --locked: exactly the versions of Cargo.lock. Stripping symbols keeps the image small; panics
# still print their message. The cache mounts keep the registry and target/ between builds.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin scan-gateway \
    && install -D -m 0755 target/release/scan-gateway /out/scan-gateway

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="scan-gateway" \
      org.opencontainers.image.description="gRPC gateway that runs Microsoft Defender for Endpoint antivirus scans" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY --from=build /out/scan-gateway /usr/local/bin/scan-gateway
# The numeric id, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
# glibc otherwise raises its mmap threshold after the first large buffer is freed, and the
# watcher's list pages (about 1 MB each) then come from the heap, where their freed pages stay
# resident between long-lived allocations: with 10,000 streams, 75 MB instead of 61 MB over a
# minute (`cargo bench --bench watch`, README "Following scans").
ENV MALLOC_MMAP_THRESHOLD_=131072
USER 65532:65532
# gRPC (ScanService, health, reflection) and admin HTTP (/healthz, /readyz, /metrics).
EXPOSE 50051 9464
# No HEALTHCHECK: the image has no shell or HTTP client, and the gateway has no health-check
# subcommand; on Kubernetes the kubelet probes it (native gRPC probes, or the admin port).
ENTRYPOINT ["/usr/local/bin/scan-gateway"]
CMD ["serve"]
