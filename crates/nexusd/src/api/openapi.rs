//! What every operation of the OpenAPI document shares, added in one place so that no handler can
//! forget it: the bearer security scheme (TCP), and the statuses the middleware and the extractors
//! answer before a handler runs (401, 400 for path and query parsing, 413/415/422 for JSON
//! bodies, 414/431 for oversized requests, 500).

use utoipa::Modify;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

/// Name of the security scheme in `components.securitySchemes`.
pub const BEARER_SCHEME: &str = "bearer";

/// The [`Modify`] applied to the generated document.
pub struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The TCP listener (`tcp_listen`) requires `Authorization: Bearer <token>` \
                         (the token of `tcp_token_file`; the scheme name in any case) and answers \
                         401 without it. The Unix socket needs no token: its file mode (0600) and \
                         the peer's credentials protect it.",
                    ))
                    .build(),
            ),
        );
        if let Some(RefOr::T(Schema::Object(create_vm))) = components.schemas.get_mut("CreateVm") {
            // `disk_size` sizes the root drive made from `image`: without an image it is refused.
            create_vm
                .extensions
                .get_or_insert_with(Default::default)
                .extend([
                    (
                        "if".to_owned(),
                        serde_json::json!({
                            "properties": {"disk_size": {"not": {"type": "null"}}},
                            "required": ["disk_size"]
                        }),
                    ),
                    (
                        "then".to_owned(),
                        serde_json::json!({
                            "properties": {"image": {"type": "string"}},
                            "required": ["image"]
                        }),
                    ),
                ]);
        }
        for (path, item) in doc.paths.paths.iter_mut() {
            let has_path_params = path.contains('{');
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                complete(op, has_path_params);
            }
        }
    }
}

fn complete(op: &mut Operation, has_path_params: bool) {
    op.security = Some(vec![SecurityRequirement::new(
        BEARER_SCHEME,
        Vec::<String>::new(),
    )]);
    let has_query = op
        .parameters
        .iter()
        .flatten()
        .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Query));
    let json_body = op.request_body.as_ref().is_some_and(|b| match b {
        RefOr::T(b) => b.content.contains_key("application/json"),
        RefOr::Ref(_) => true,
    });
    add(op, 401, "Over TCP: missing or wrong bearer token");
    add(
        op,
        414,
        "The request target is longer than the daemon accepts",
    );
    add(
        op,
        431,
        "The request headers are larger than the daemon accepts",
    );
    add(op, 500, "Internal error; details are in the nexusd log");
    if has_path_params {
        add(
            op,
            400,
            "A path parameter is not valid UTF-8 once percent-decoded",
        );
        add(op, 404, "No such resource");
    }
    if has_query {
        add(
            op,
            400,
            "Bad query string: an unknown parameter or a value of the wrong type",
        );
    }
    if json_body {
        add(op, 400, "Malformed JSON");
        add(op, 413, "Body too large");
        add(op, 415, "The body is not `Content-Type: application/json`");
        add(
            op,
            422,
            "A well-formed body of the wrong shape or with an invalid field (`field` names it)",
        );
    }
}

/// Adds `status` with the JSON error body unless the operation documents it already.
fn add(op: &mut Operation, status: u16, description: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
                .into()
        });
}
