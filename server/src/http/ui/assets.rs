//! The dashboard's static files (`/static/{file}`): the stylesheet and the script, compiled
//! into the binary from `web/static/`.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// `GET /static/{file}`: the stylesheet and script, compiled into the binary.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "hapulse.css" => (
            include_str!("../../../../web/static/hapulse.css"),
            "text/css; charset=utf-8",
        ),
        "hapulse.js" => (
            include_str!("../../../../web/static/hapulse.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}
