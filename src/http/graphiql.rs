//! GraphiQL in the browser, served from the binary itself: its scripts and styles are
//! embedded at build time (`assets/graphiql`, vendored from npm with their licences), so the
//! page needs nothing from another host. Subscriptions go over the `/ws` WebSocket.
//!
//! Owns: the page and its assets.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{Html, IntoResponse, Response};

use crate::http::refusal::{refuse, Code};

/// The embedded files: name, content type, bytes.
const ASSETS: [(&str, &str, &[u8]); 4] = [
    (
        "react.production.min.js",
        "text/javascript",
        include_bytes!("../../assets/graphiql/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript",
        include_bytes!("../../assets/graphiql/react-dom.production.min.js"),
    ),
    ("graphiql.min.js", "text/javascript", include_bytes!("../../assets/graphiql/graphiql.min.js")),
    ("graphiql.min.css", "text/css", include_bytes!("../../assets/graphiql/graphiql.min.css")),
];

/// Under this path; the version in it lets browsers keep the files for good.
pub const ASSET_PATH: &str = "/graphiql/4.1.2";

/// The page: GraphiQL against `/graphql`, subscriptions over `/ws`. A `query` in the page's
/// URL fills the editor.
pub fn page() -> Response {
    let html = format!(
        r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>checkout-gateway · GraphiQL</title>
  <link rel="stylesheet" href="{ASSET_PATH}/graphiql.min.css">
  <style>body {{ margin: 0; height: 100vh; }} #graphiql {{ height: 100vh; }}</style>
</head>
<body>
  <div id="graphiql">Loading GraphiQL…</div>
  <script src="{ASSET_PATH}/react.production.min.js"></script>
  <script src="{ASSET_PATH}/react-dom.production.min.js"></script>
  <script src="{ASSET_PATH}/graphiql.min.js"></script>
  <script>
    const params = new URLSearchParams(location.search);
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    // GraphiQL's fetcher (the bundle's graphql-ws client over `subscriptionUrl` for a
    // subscription, HTTP for the rest) picks the transport from GraphiQL's parse of the editor,
    // made 100 ms after its last change: a subscription pasted and run within that time went
    // over HTTP, which cannot run it. The document sent decides, parsed here.
    const httpOrWs = GraphiQL.createFetcher({{
      url: location.origin + '/graphql',
      subscriptionUrl: scheme + '//' + location.host + '/ws',
    }});
    const fetcher = (request, options) => {{
      let documentAST;
      // A document that does not parse goes over HTTP, whose answer says why.
      try {{ documentAST = GraphiQL.GraphQL.parse(request.query); }} catch {{}}
      // One operation is the one to run, whatever name GraphiQL remembers from before the edit.
      const operations = documentAST?.definitions.filter((d) => d.kind === 'OperationDefinition') ?? [];
      if (operations.length === 1) request = {{ ...request, operationName: operations[0].name?.value }};
      return httpOrWs(request, {{ ...options, documentAST }});
    }};
    const props = {{ fetcher, defaultEditorToolsVisibility: true }};
    if (params.get('query')) {{ props.query = params.get('query'); props.defaultQuery = params.get('query'); }}
    ReactDOM.createRoot(document.getElementById('graphiql')).render(React.createElement(GraphiQL, props));
  </script>
</body>
</html>
"#
    );
    Html(html).into_response()
}

/// One embedded asset, cached for a year (its path carries the version).
pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, bytes)) => {
            ([(CONTENT_TYPE, *content_type), (CACHE_CONTROL, "public, max-age=31536000, immutable")], *bytes)
                .into_response()
        }
        None => refuse(Code::NotFound, "no such asset"),
    }
}
