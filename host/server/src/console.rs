//! The web console at `/console`: one page, a stylesheet and a script (`host/server/console/`),
//! embedded in the binary so it works offline. It is a client of the JSON API like any other:
//! the page and its assets are public and hold no data; everything it shows comes from `/v1`
//! with the API key the user signs in with. It is not part of the API, so not in the OpenAPI
//! document.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const PAGE: &str = include_str!("../console/index.html");
const STYLE: &str = include_str!("../console/console.css");
const SCRIPT: &str = include_str!("../console/console.js");

/// Scripts, styles and API calls from this origin only; images also from `data:` and `blob:`
/// URLs (thumbnails, the query image's preview). No inline script or style, no plugins, no
/// framing.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console's routes, public (the assets carry no data).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(|| async { asset("text/html; charset=utf-8", PAGE) }))
        .route("/console/", get(|| async { asset("text/html; charset=utf-8", PAGE) }))
        .route("/console/console.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/console/console.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            // Assets change with the binary: revalidate rather than keep a stale script.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
