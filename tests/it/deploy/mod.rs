//! Deployment (issue 16): the config file, `serve --check` and `healthcheck` through the real
//! binary; the shipped systemd unit, container recipe, Kubernetes manifests, Grafana dashboard
//! and Prometheus rules checked against what the binary really does.

mod artifacts;
mod check;
