//! The live dashboard at the admin server's `/`: one hand-written page
//! (`index.html`, `app.js`, `style.css` beside this file) that polls
//! `/api/v1/status` once a second and draws SVG charts from it.
//!
//! Guarantees: the assets are compiled into the binary (no files to ship,
//! no CDN, works offline); every response carries `Cache-Control:
//! no-cache`, so a browser never keeps a page older than the binary
//! serving it. The page only reads the status document; it holds a bounded
//! ring of samples (see `MAX_SAMPLES` in `app.js`) and never changes
//! pipeline state.
//!
//! The assets are embedded with `include_str!` rather than rust-embed: the
//! list is three fixed files, and rust-embed reads them from disk at run
//! time in debug builds, which would make a test binary depend on the
//! source tree being present.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// `GET /` and `GET /dashboard/{app.js,style.css}`.
pub fn router() -> axum::Router {
    axum::Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
