# Builder: the static musl binary. Final image: that binary and nothing else.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# No .git in the build context: pass the commit for --version.
ARG SMOLVM_CLEANUP_COMMIT=unknown
ENV SMOLVM_CLEANUP_COMMIT=${SMOLVM_CLEANUP_COMMIT}
RUN cargo build --release --locked --target x86_64-unknown-linux-musl

FROM scratch
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/smolvm-cleanup /smolvm-cleanup
ENTRYPOINT ["/smolvm-cleanup"]
