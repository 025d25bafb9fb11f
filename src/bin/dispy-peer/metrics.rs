//! `serve --metrics`: the node's Prometheus endpoint (`GET /metrics`), served by axum on
//! the node's runtime. A scrape only reads atomics: it never waits on the node's task.

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use dispy_node::metrics::Metrics;
use std::net::SocketAddr;

/// OpenMetrics, what prometheus-client writes (Prometheus asks for it first).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` (a busy port is an error here, before the node starts) and serves
/// `/metrics` from a task of the current runtime. Returns the address bound.
pub(crate) async fn start(addr: SocketAddr, metrics: Metrics) -> anyhow::Result<SocketAddr> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--metrics: cannot listen on {addr}"))?;
    let bound = listener.local_addr().context("--metrics: the bound address")?;
    let app = Router::new().route("/metrics", get(scrape)).with_state(metrics);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(cause = %e, "the metrics endpoint stopped");
        }
    });
    Ok(bound)
}

async fn scrape(State(metrics): State<Metrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render())
}
