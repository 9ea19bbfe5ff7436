//! The GraphiQL playground, built into the binary so that it works on a
//! network without internet: the page, its start-up script and the pinned
//! GraphiQL and React bundles of `assets/playground/` (refreshed by
//! `scripts/refresh-playground.sh`, which also writes their licences there).
//!
//! The page is served by `GET /graphql`; its files under `/playground/`.
//! Their addresses carry a hash of the bundled files, so browsers may cache
//! them for good and still pick up a new bundle after an upgrade.
//!
//! The files are a fixed list of six, so `include_bytes!` and a table serve
//! them; a crate that walks a folder would add nothing.

use std::hash::{DefaultHasher, Hasher};
use std::sync::LazyLock;

use axum::{
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    Asset { name: "graphiql.min.js", content_type: JS, bytes: include_bytes!("../assets/playground/graphiql.min.js") },
    Asset {
        name: "graphiql.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/playground/graphiql.min.css"),
    },
    Asset {
        name: "react.production.min.js",
        content_type: JS,
        bytes: include_bytes!("../assets/playground/react.production.min.js"),
    },
    Asset {
        name: "react-dom.production.min.js",
        content_type: JS,
        bytes: include_bytes!("../assets/playground/react-dom.production.min.js"),
    },
    Asset {
        name: "tagbase-playground.js",
        content_type: JS,
        bytes: include_bytes!("../assets/playground/tagbase-playground.js"),
    },
    Asset {
        name: "THIRD-PARTY-LICENSES.txt",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("../assets/playground/THIRD-PARTY-LICENSES.txt"),
    },
];

const PAGE: &str = include_str!("../assets/playground/index.html");

/// The page with its asset addresses stamped with the hash of the bundled
/// files (computed once).
static STAMPED_PAGE: LazyLock<String> = LazyLock::new(|| {
    let mut hasher = DefaultHasher::new();
    for asset in ASSETS {
        hasher.write(asset.bytes);
    }
    PAGE.replace("__VERSION__", &format!("{:016x}", hasher.finish()))
});

/// The playground page (GraphiQL against this server's `/graphql`).
pub fn page() -> Response {
    let mut response = Html(STAMPED_PAGE.as_str()).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /playground/{file}`: one of the bundled files, or 404.
pub async fn asset(Path(name): Path<String>) -> Response {
    let Some(asset) = ASSETS.iter().find(|asset| asset.name == name) else {
        return (StatusCode::NOT_FOUND, "no such playground file").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        asset.bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_names_only_files_this_server_serves() {
        let page = STAMPED_PAGE.as_str();
        assert!(!page.contains("__VERSION__"));
        assert!(!page.contains("http://") && !page.contains("https://"), "the page must load nothing from outside");
        let mut named = 0;
        for part in page.split("/playground/").skip(1) {
            let name = part.split('?').next().unwrap();
            assert!(ASSETS.iter().any(|asset| asset.name == name), "{name} is not bundled");
            named += 1;
        }
        assert_eq!(named, 5);
    }
}
