//! The page that watches a team work, `GET /ui`: one self-contained
//! HTML page (`ui.html`, with `ui.css` and `ui.js` put inline), served
//! without auth because it holds no data; it reads the run board's JSON
//! (see `board`) with the token the user gives it.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The page's parts, put together once: the HTML with its style and
/// script inline, and a Content-Security-Policy that allows exactly that
/// style and that script (by their SHA-256) and requests to this server
/// only, so that even markup that slipped into the page could run nothing.
struct Page {
    html: String,
    csp: String,
}

const HTML: &str = include_str!("ui.html");
const CSS: &str = include_str!("ui.css");
const JS: &str = include_str!("ui.js");

fn the_page() -> &'static Page {
    static PAGE: OnceLock<Page> = OnceLock::new();
    PAGE.get_or_init(|| {
        let hash = |s: &str| format!("'sha256-{}'", base64(&Sha256::digest(s.as_bytes())));
        Page {
            html: HTML.replace("/*STYLE*/", CSS).replace("/*SCRIPT*/", JS),
            csp: format!(
                "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                hash(JS),
                hash(CSS)
            ),
        }
    })
}

pub(super) async fn page() -> Response {
    let p = the_page();
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, p.csp.as_str()),
        ],
        p.html.clone(),
    )
        .into_response()
}

/// Standard base64 with padding (what a CSP hash source is written in).
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_inlines_its_style_and_script_and_the_policy_allows_only_them() {
        let p = the_page();
        assert!(!p.html.contains("/*SCRIPT*/") && !p.html.contains("/*STYLE*/"));
        assert!(p.html.contains(JS) && p.html.contains(CSS));
        assert!(!p.html.contains("src=\"http") && !p.html.contains("href=\"http"));
        assert!(p.csp.contains(&format!(
            "'sha256-{}'",
            base64(&Sha256::digest(JS.as_bytes()))
        )));
    }
}
