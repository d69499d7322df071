# syntax=docker/dockerfile:1
#
# The hoptrace image: the `hoptrace` binary with its kernel programs
# embedded, and the tools it runs (ip, iptables, nft).
#
#   docker build -t REGISTRY/hoptrace:VERSION .
#
# Used by manifests/ (the node agent DaemonSet and the diagnosis Job).

# ---- builder: Debian bookworm, the toolchain of `cargo xtask setup` ----
FROM rust:1.95-bookworm AS builder

# LLVM 22 for bpf-linker, from the same Debian sources `cargo xtask setup`
# installs it from (xtask/src/setup.rs, BUILD_PACKAGES). Where the
# builder's sources lack llvm-22, add LLVM's own apt repository first.
# Versions are not pinned: a stable Debian release only takes fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        llvm-22-dev libpolly-22-dev libzstd-dev build-essential \
    && rm -rf /var/lib/apt/lists/*

# The kernel programs build with nightly and rust-src (build-std for the
# BPF target), linked by bpf-linker 0.13 built against LLVM 22.
RUN rustup toolchain install nightly --profile minimal --component rust-src \
    && LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --locked \
        --version 0.13.0 --no-default-features --features llvm-22

WORKDIR /src
COPY . .
# hoptrace-core/build.rs builds hoptrace-ebpf with aya-build and embeds the
# objects; AYA_BUILD_SKIP must stay unset here.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p hoptrace \
    && cp target/release/hoptrace /usr/local/bin/hoptrace

# ---- runtime: only what hoptrace executes ----
FROM debian:bookworm-slim

# iproute2: device, route and netns discovery (`ip -j`); iptables and
# nftables: reading kube-proxy's rules; ca-certificates: TLS to the API
# server when the CA is not mounted.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        iproute2 iptables nftables ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY --from=builder /usr/local/bin/hoptrace /usr/local/bin/hoptrace

# Root, on purpose: loading BPF programs needs capabilities, which a
# non-root user loses at exec in a container (no ambient capabilities in
# Kubernetes). The manifests drop every capability but BPF, PERFMON,
# NET_ADMIN and SYS_ADMIN and make the root filesystem read-only.
# hadolint ignore=DL3002
USER 0
ENTRYPOINT ["/usr/local/bin/hoptrace"]
CMD ["--help"]
