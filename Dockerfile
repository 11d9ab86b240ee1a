# syntax=docker/dockerfile:1
# The tator-operator image: a static (musl) build of the `tator-operator` binary on a distroless
# base, running as a non-root user with nothing else in the image.
#
#   make image                       # docker build -t cvisionai/tator-operator:<appVersion> .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ... .
#
# TLS uses rustls with the ring provider only (no OpenSSL, no aws-lc), so the binary links
# statically against musl.

FROM rust:1.89-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY crates ./crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
 && cargo build --locked --release --target "$target" -p tator-operator --bin tator-operator \
 && cp "target/$target/release/tator-operator" /tator-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /tator-operator /usr/local/bin/tator-operator
# 65532 is distroless' nonroot user; the chart runs the pod with the same uid and a read-only
# root filesystem (the operator writes no files).
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tator-operator"]
CMD ["run"]
