# syntax=docker/dockerfile:1
#
# The sitemon binary in a small image. Build: docker build -t sitemon .
# Run:   docker run --rm -e DATABASE_URL=... -e KAFKA_BROKERS=... sitemon check
#
# Untested on the machine sitemon is developed on (it has no Docker engine); see the README.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The caches keep crates.io downloads and compiled dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sitemon \
    && cp target/release/sitemon /usr/local/bin/sitemon

# TLS roots are compiled into the binary (webpki-roots), so the runtime image needs no CA
# bundle: glibc and libgcc are enough.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/sitemon /usr/local/bin/sitemon
ENTRYPOINT ["/usr/local/bin/sitemon"]
CMD ["--help"]
