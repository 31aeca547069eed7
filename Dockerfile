# Herald's image: the controller, the speaker and its BGP process (speaker-bgp) and
# kubectl-herald, static, on a distroless base that runs as non-root by default (the
# speaker's DaemonSet runs it as root with only NET_RAW and NET_ADMIN). Build: make image-docker (make image builds the same without Docker: hack/images)
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ ./controller ./speaker ./speaker-bgp ./kubectl-herald

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/controller /out/speaker /out/speaker-bgp /out/kubectl-herald /
USER 65532:65532
ENTRYPOINT ["/controller"]
