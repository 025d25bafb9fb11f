//! The monitor's HTTP server (axum): the page, the event stream, the JSON snapshot and the
//! cancel endpoints. It reads only what the aggregator published ([`super::Published`]);
//! cancelling is a command to the scheduler, sent without holding the cluster open.

use super::Published;
use super::page;
use crate::scheduler::Cmd;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use dispy_protocol::JobId;
use futures::Stream;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info};

/// The header a script may pass the token in (the `token` query parameter works too).
pub(crate) const TOKEN_HEADER: &str = "x-dispy-token";

/// How long a cancel waits for room in the scheduler's command queue.
const CANCEL_WAIT: Duration = Duration::from_secs(2);

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    token: Arc<str>,
    published: Published,
    cmds: mpsc::WeakSender<Cmd>,
}

impl AppState {
    pub(crate) fn new(token: String, published: Published, cmds: mpsc::WeakSender<Cmd>) -> AppState {
        AppState { token: token.into(), published, cmds }
    }

    /// Whether `given` is the token, compared in constant time.
    fn token_is(&self, given: &str) -> bool {
        let (a, b) = (self.token.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Why an API request was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("this needs the token of the monitor's URL (?token= or the {TOKEN_HEADER} header)")]
    NoToken,
    #[error("wrong token")]
    BadToken,
    #[error("the cluster has closed")]
    ClusterGone,
    #[error("the scheduler is busy; try again")]
    Busy,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::NoToken => StatusCode::UNAUTHORIZED,
            ApiError::BadToken => StatusCode::FORBIDDEN,
            ApiError::ClusterGone => StatusCode::GONE,
            ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, axum::Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}

/// The `token` query parameter.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

/// Serves until the task is aborted (pages' event streams never end by themselves).
pub(crate) async fn serve(listener: tokio::net::TcpListener, state: AppState) {
    let app = Router::new()
        .route("/", get(index))
        .route("/events", get(events))
        .route("/api/status", get(status))
        .route("/api/cancel", post(cancel_all))
        .route("/api/cancel/{job}", post(cancel_one))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        debug!(cause = %e, "the web monitor's server stopped");
    }
}

async fn index(State(s): State<AppState>, Query(q): Query<TokenQuery>) -> Html<String> {
    // The page gets the token only when its URL had the right one: it can then cancel.
    let token = q.token.filter(|t| s.token_is(t));
    let view = s.published.full.borrow().clone();
    Html(page::render(&view, token.as_deref()))
}

async fn status(State(s): State<AppState>) -> Response {
    let view = s.published.full.borrow().clone();
    axum::Json(&*view).into_response()
}

/// The event stream: a `full` event first (and again after falling behind), then a
/// `delta` per change, at most one per tick.
async fn events(State(s): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribed before the full view is read: no change falls between the two.
    let rx = s.published.deltas.subscribe();
    let first = full_event(&s);
    let stream = futures::stream::unfold((Some(first), rx, s), |(first, mut rx, s)| async move {
        if let Some(ev) = first {
            return Some((Ok(ev), (None, rx, s)));
        }
        let ev = match rx.recv().await {
            Ok(json) => Event::default().event("delta").data(json.as_str()),
            Err(broadcast::error::RecvError::Lagged(_)) => full_event(&s),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(ev), (None, rx, s)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn full_event(s: &AppState) -> Event {
    let view = s.published.full.borrow().clone();
    let json = serde_json::to_string(&*view).unwrap_or_else(|_| "{}".into());
    Event::default().event("full").data(json)
}

/// Checks the token (header or query), then asks the scheduler to cancel.
async fn cancel(s: &AppState, headers: &HeaderMap, query: TokenQuery, cmd: Cmd) -> Result<(), ApiError> {
    let given = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string).or(query.token);
    match given {
        None => return Err(ApiError::NoToken),
        Some(t) if !s.token_is(&t) => return Err(ApiError::BadToken),
        Some(_) => {}
    }
    let cmds = s.cmds.upgrade().ok_or(ApiError::ClusterGone)?;
    match tokio::time::timeout(CANCEL_WAIT, cmds.send(cmd)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(ApiError::ClusterGone),
        Err(_) => Err(ApiError::Busy),
    }
}

async fn cancel_one(
    State(s): State<AppState>,
    Path(job): Path<u64>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Result<impl IntoResponse, ApiError> {
    cancel(&s, &headers, q, Cmd::Cancel { ids: vec![JobId(job)] }).await?;
    info!(job, "job cancelled from the web monitor");
    Ok((StatusCode::ACCEPTED, axum::Json(serde_json::json!({ "cancelling": [job] }))))
}

async fn cancel_all(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Result<impl IntoResponse, ApiError> {
    cancel(&s, &headers, q, Cmd::CancelAll).await?;
    info!("every job cancelled from the web monitor");
    Ok((StatusCode::ACCEPTED, axum::Json(serde_json::json!({ "cancelling": "all" }))))
}
