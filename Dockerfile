# Multi-stage build of ferrolb's images: static musl binaries on an empty base (no shell, no libc).
#   docker build --target controller -t ferrolb/controller:0.1.0 .
# The speaker target arrives with the speaker.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p ferrolb-controller \
 && cp target/x86_64-unknown-linux-musl/release/ferrolb-controller /ferrolb-controller

FROM scratch AS controller
COPY --from=build /ferrolb-controller /ferrolb-controller
USER 65532:65532
EXPOSE 7472
ENTRYPOINT ["/ferrolb-controller"]
