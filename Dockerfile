# Multi-stage build of ferrolb's images: static musl binaries on an empty base (no shell, no libc). Without
# Docker, `make images` (images/build.sh) yields the same layout: entrypoint, user, exposed ports.
#   docker build --target controller -t ferrolb/controller:0.1.0 .
#   docker build --target speaker -t ferrolb/speaker:0.1.0 .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p ferrolb-controller -p ferrolb-speaker \
 && cp target/x86_64-unknown-linux-musl/release/ferrolb-controller target/x86_64-unknown-linux-musl/release/ferrolb-speaker /

FROM scratch AS controller
COPY --from=build /ferrolb-controller /ferrolb-controller
USER 65532:65532
EXPOSE 7472
ENTRYPOINT ["/ferrolb-controller"]

# An AF_PACKET socket needs CAP_NET_RAW. The chart runs the speaker as 65532 with NET_RAW added and every other
# capability dropped; a non-root process keeps an added capability across execve only through the binary's file
# capability (docs/design.md §9.1).
FROM debian:bookworm-slim AS caps
RUN apt-get update && apt-get install -y --no-install-recommends libcap2-bin && rm -rf /var/lib/apt/lists/*
COPY --from=build /ferrolb-speaker /ferrolb-speaker
RUN setcap cap_net_raw=ep /ferrolb-speaker

FROM scratch AS speaker
COPY --from=caps /ferrolb-speaker /ferrolb-speaker
USER 65532:65532
EXPOSE 7473 7946/udp
ENTRYPOINT ["/ferrolb-speaker"]
