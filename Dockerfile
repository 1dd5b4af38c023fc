# syntax=docker/dockerfile:1
# Multi-stage build of printfleet's two binaries. Pick one with --target:
#   docker build --target spooler  -t printfleet-spooler .
#   docker build --target operator -t printfleet-operator .

FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY . .
# Cache the registry and target directory between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p printfleet-spooler -p printfleet-operator \
 && mkdir -p /out \
 && cp target/release/printfleet-spooler target/release/printfleet-operator /out/

# glibc, CA certificates, no shell, uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS spooler
COPY --from=build /out/printfleet-spooler /usr/local/bin/printfleet-spooler
USER 65532:65532
EXPOSE 8631
ENTRYPOINT ["/usr/local/bin/printfleet-spooler"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/printfleet-operator /usr/local/bin/printfleet-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/printfleet-operator"]
