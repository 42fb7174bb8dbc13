//! The OpenAPI 3.1 document served at `/openapi.json`: the Administration API
//! generated from its handlers and objects, plus the data-plane routes keygate
//! authenticates and forwards (their bodies are OpenAI's, passed through).

use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{ResponseBuilder, ResponsesBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, OpenApi as Document, Ref, Required};
use utoipa::{OpenApi as _, PartialSchema, ToSchema};

use crate::dialect::ErrorResponse;

/// Builds the whole document once.
pub fn document() -> Document {
    let mut doc = crate::admin::AdminApi::openapi();
    doc.merge(crate::admin::LeakApi::openapi());
    doc.info.title = "keygate".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description = Some(
        "Self-hosted, OpenAI-compatible API-key gateway. Data-plane routes take a project key; \
         `/v1/organization/*` takes an admin key. Fields and routes marked \"Ours\" are keygate extensions."
            .into(),
    );
    let components = doc.components.get_or_insert_with(Default::default);
    components
        .add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    components.schemas.insert(ErrorResponse::name().into_owned(), ErrorResponse::schema());
    doc.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
    for (method, path, summary, body) in [
        (HttpMethod::Get, "/v1/models", "List the models this key may use", false),
        (HttpMethod::Get, "/v1/models/{model}", "Retrieve a model", false),
        (HttpMethod::Post, "/v1/chat/completions", "Chat completion (JSON or SSE)", true),
        (HttpMethod::Post, "/v1/completions", "Completion", true),
        (HttpMethod::Post, "/v1/embeddings", "Embeddings", true),
        (HttpMethod::Post, "/v1/responses", "Responses API (JSON or SSE)", true),
    ] {
        let mut op = OperationBuilder::new().summary(Some(summary)).tag("data plane").responses(data_plane_responses());
        if path.contains("{model}") {
            let name = ParameterBuilder::new()
                .name("model")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(String::schema()));
            op = op.parameter(name);
        }
        if body {
            let content = ContentBuilder::new().schema(Some(ObjectBuilder::new())).build();
            op = op.request_body(Some(
                RequestBodyBuilder::new().content("application/json", content).required(Some(Required::True)).build(),
            ));
        }
        doc.paths.add_path_operation(path, vec![method], op.build());
    }
    let key_info = OperationBuilder::new()
        .summary(Some("Ours: what the presenting key may do (id, permissions, models, limits; never the secret)"))
        .tag("keygate")
        .responses(
            ResponsesBuilder::new()
                .response("200", ResponseBuilder::new().description("A `keygate.key` object"))
                .response("401", error_response("Missing or invalid key")),
        );
    doc.paths.add_path_operation("/v1/keygate/key", vec![HttpMethod::Get], key_info.build());
    doc.paths.paths.entry("/healthz".into()).or_insert_with(|| public("Process alive"));
    doc.paths.paths.entry("/readyz".into()).or_insert_with(|| public("Store reachable"));
    doc
}

fn error_response(description: &str) -> ResponseBuilder {
    let schema = Ref::from_schema_name(ErrorResponse::name());
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(schema)).build())
}

fn data_plane_responses() -> ResponsesBuilder {
    ResponsesBuilder::new()
        .response("200", ResponseBuilder::new().description("The upstream's answer, passed through"))
        .response("400", error_response("Malformed request"))
        .response("401", error_response("Missing, invalid, revoked or insufficient key"))
        .response("404", error_response("Unknown route or model outside the key's allow-list"))
        .response("413", error_response("Body larger than the configured limit"))
        .response("502", error_response("Upstream unreachable"))
        .response("504", error_response("Upstream timed out"))
}

fn public(summary: &str) -> PathItem {
    let op = OperationBuilder::new()
        .summary(Some(summary))
        .tag("public")
        .security(SecurityRequirement::default())
        .responses(ResponsesBuilder::new().response("200", ResponseBuilder::new().description("OK")));
    PathItem::new(HttpMethod::Get, op.build())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_covers_the_admin_api_and_data_plane() {
        let doc = super::document();
        let json = serde_json::to_value(&doc).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3.1"));
        for path in [
            "/v1/organization/projects",
            "/v1/organization/projects/{project_id}/api_keys/{key_id}/rotate",
            "/v1/organization/admin_api_keys",
            "/v1/organization/audit_logs",
            "/v1/chat/completions",
            "/v1/models/{model}",
            "/v1/keys/leaked",
        ] {
            assert!(json["paths"][path].is_object(), "{path} missing");
        }
        let leaked = &json["paths"]["/v1/keys/leaked"]["post"];
        assert_eq!(leaked["security"], serde_json::json!([{}]), "the leak report takes no key: {leaked}");
        assert!(leaked["responses"]["202"].is_object(), "{leaked}");
        assert!(json["components"]["schemas"]["ProjectApiKeyObject"].is_object());
        assert!(json["components"]["schemas"]["ErrorResponse"].is_object());
    }
}
