//! The OpenAPI 3.1 document served at `/openapi.json`: the Administration API
//! generated from its handlers and objects, plus what is written here by hand:
//! the public routes, `/v1/keygate/echo-auth`, the data-plane routes keygate
//! authenticates and forwards (their bodies are OpenAI's, passed through) and
//! the Azure front door. Every operation has a unique `operationId` (OpenAI's
//! or Azure's own where they name one) and a summary; `tests/sdk/test_openapi.py`
//! validates the served document.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{ResponseBuilder, ResponsesBuilder};
use utoipa::openapi::schema::Type;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{ContentBuilder, ObjectBuilder, OpenApi as Document, Ref, RefOr, Required, Schema};
use utoipa::{OpenApi as _, PartialSchema, ToSchema};

use crate::dialect::ErrorResponse;

const DESCRIPTION: &str = "Self-hosted, OpenAI-compatible API-key gateway. Data-plane routes take a project key \
(`Authorization: Bearer`, or `api-key` on Azure routes); `/v1/organization/*` takes an admin key. Fields and routes \
marked \"Ours\" are keygate extensions.\n\n\
Besides the data-plane paths listed here, every other path under `/v1/` (files, batches, audio, images, \
moderations, fine-tuning, assistants...) is authenticated and forwarded as it is, with the scope its resource needs; \
`/v1/organization/*` and `/v1/keygate/*` are keygate's own and never forwarded.\n\n\
Prometheus metrics (`GET /metrics`) are not served by this server: they are on a separate metrics listener \
(`server.metrics_listen`, loopback by default), because failure counts by reason would tell a guesser which keys exist.";

/// The `AzureErrorResponse` schema: Azure's error body (`{\"error\": {\"code\", \"message\"}}`).
const AZURE_ERROR: &str = "AzureErrorResponse";

/// Builds the whole document once.
pub fn document() -> Document {
    let mut doc = crate::admin::AdminApi::openapi();
    doc.merge(crate::admin::LeakApi::openapi());
    doc.info.title = "keygate".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description = Some(DESCRIPTION.into());
    let components = doc.components.get_or_insert_with(Default::default);
    components
        .add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    components.add_security_scheme("api-key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("api-key"))));
    components.schemas.insert(ErrorResponse::name().into_owned(), ErrorResponse::schema());
    components.schemas.insert(AZURE_ERROR.into(), azure_error_schema());
    doc.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
    let tags = doc.tags.get_or_insert_with(Vec::new);
    for (name, description) in [
        (
            "data plane",
            "OpenAI's routes, authenticated and forwarded; any other `/v1/` path is forwarded the same way.",
        ),
        ("azure", "The Azure OpenAI front door: classic deployment URLs with `api-version`, answered as Azure does."),
        ("public", "No key needed."),
    ] {
        tags.push(TagBuilder::new().name(name).description(Some(description)).build());
    }

    for (method, path, operation_id, summary, body) in [
        (HttpMethod::Get, "/v1/models", "listModels", "List the models this key may use", false),
        (HttpMethod::Get, "/v1/models/{model}", "retrieveModel", "Retrieve a model", false),
        (HttpMethod::Post, "/v1/chat/completions", "createChatCompletion", "Chat completion (JSON or SSE)", true),
        (HttpMethod::Post, "/v1/completions", "createCompletion", "Completion", true),
        (HttpMethod::Post, "/v1/embeddings", "createEmbedding", "Embeddings", true),
        (HttpMethod::Post, "/v1/responses", "createResponse", "Responses API (JSON or SSE)", true),
    ] {
        let mut op = OperationBuilder::new()
            .operation_id(Some(operation_id))
            .summary(Some(summary))
            .tag("data plane")
            .responses(data_plane_responses());
        if path.contains("{model}") {
            op = op.parameter(path_parameter("model", "A model id"));
        }
        if body {
            op = op.request_body(Some(json_body()));
        }
        doc.paths.add_path_operation(path, vec![method], op.build());
    }

    // Azure's own operationIds (azure-rest-api-specs, inference 2024-10-21).
    for (op_path, operation_id, summary) in [
        ("chat/completions", "ChatCompletions_Create", "Chat completion through an Azure deployment (JSON or SSE)"),
        ("completions", "Completions_Create", "Completion through an Azure deployment"),
        ("embeddings", "embeddings_create", "Embeddings through an Azure deployment"),
    ] {
        let api_version = ParameterBuilder::new()
            .name("api-version")
            .parameter_in(ParameterIn::Query)
            .required(Required::True)
            .description(Some("One of `azure.api_versions`; another version is answered 404, as Azure does"))
            .example(Some(serde_json::json!("2024-10-21")))
            .schema(Some(String::schema()));
        let op = OperationBuilder::new()
            .operation_id(Some(operation_id))
            .summary(Some(summary))
            .description(Some(
                "The deployment's model (`azure.deployments`) is used when the body names none; the request then \
                 takes the path of the OpenAI route. `/openai/v1/...` and the other `/openai/...` routes the Azure \
                 SDKs call are accepted as well.",
            ))
            .tag("azure")
            .parameter(path_parameter("deployment-id", "The deployment name"))
            .parameter(api_version)
            .request_body(Some(json_body()))
            .security(SecurityRequirement::new("api-key", Vec::<String>::new()))
            .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
            .responses(azure_responses());
        let path = format!("/openai/deployments/{{deployment-id}}/{op_path}");
        doc.paths.add_path_operation(path, vec![HttpMethod::Post], op.build());
    }

    let echo = OperationBuilder::new()
        .operation_id(Some("echo-auth"))
        .summary(Some("Echo the Authorization header's length and hash"))
        .description(Some(
            "Ours, any valid project key: the length and a SHA-256 prefix of the `Authorization` header that \
             arrived, so `keygate doctor` can tell whether something on the way stripped or rewrote it.",
        ))
        .tag("keygate")
        .responses(
            ResponsesBuilder::new()
                .response("200", json_response("What arrived", echo_auth_schema()))
                .response("401", error_response("Missing, invalid or revoked key")),
        );
    doc.paths.add_path_operation("/v1/keygate/echo-auth", vec![HttpMethod::Get], echo.build());

    doc.paths.paths.insert(
        "/healthz".into(),
        public("get-health", "Liveness", "`ok` while the process serves requests.", &[("200", "`ok`")]),
    );
    doc.paths.paths.insert(
        "/readyz".into(),
        public(
            "get-readiness",
            "Readiness",
            "`ready`; `degraded: ...` (200) while serving with reduced guarantees (database away: keys are checked \
             from memory and writes are buffered; Redis away with `on_failure = \"open\"`: limits per replica); \
             503 while requests cannot be served.",
            &[("200", "`ready` or `degraded: <reasons>`"), ("503", "Not serving: the reason")],
        ),
    );

    let key_info = OperationBuilder::new()
        .operation_id(Some("get-keygate-key"))
        .summary(Some("Ours: what the presenting key may do (id, permissions, models, limits; never the secret)"))
        .tag("keygate")
        .responses(
            ResponsesBuilder::new()
                .response("200", ResponseBuilder::new().description("A `keygate.key` object"))
                .response("401", error_response("Missing or invalid key")),
        );
    doc.paths.add_path_operation("/v1/keygate/key", vec![HttpMethod::Get], key_info.build());
    doc
}

fn path_parameter(name: &str, description: &str) -> ParameterBuilder {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(String::schema()))
}

fn json_body() -> utoipa::openapi::request_body::RequestBody {
    let content = ContentBuilder::new().schema(Some(ObjectBuilder::new())).build();
    RequestBodyBuilder::new().content("application/json", content).required(Some(Required::True)).build()
}

fn json_response(description: &str, schema: impl Into<RefOr<Schema>>) -> ResponseBuilder {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(schema)).build())
}

fn error_response(description: &str) -> ResponseBuilder {
    json_response(description, Ref::from_schema_name(ErrorResponse::name()))
}

fn data_plane_responses() -> ResponsesBuilder {
    plane_responses(error_response, "Unknown route or model outside the key's allow-list")
}

fn azure_responses() -> ResponsesBuilder {
    plane_responses(
        |description| json_response(description, Ref::from_schema_name(AZURE_ERROR)),
        "Unknown deployment, route or api-version",
    )
}

/// A forwarding route's answers, each error in its dialect's shape.
fn plane_responses(error: impl Fn(&str) -> ResponseBuilder, not_found: &str) -> ResponsesBuilder {
    ResponsesBuilder::new()
        .response("200", ResponseBuilder::new().description("The upstream's answer, passed through"))
        .response("400", error("Malformed request"))
        .response("401", error("Missing, invalid, revoked or insufficient key"))
        .response("404", error(not_found))
        .response("413", error("Body larger than the configured limit"))
        .response("429", error("Rate limit or budget exceeded"))
        .response("502", error("Upstream unreachable"))
        .response("504", error("Upstream timed out"))
}

fn azure_error_schema() -> RefOr<Schema> {
    let error = ObjectBuilder::new()
        .property("code", ObjectBuilder::new().schema_type(Type::String))
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .required("code")
        .required("message");
    ObjectBuilder::new().property("error", error).required("error").into()
}

fn echo_auth_schema() -> RefOr<Schema> {
    ObjectBuilder::new()
        .property("object", ObjectBuilder::new().schema_type(Type::String).examples(["keygate.echo_auth"]))
        .property("length", ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))
        .property(
            "sha256_prefix",
            ObjectBuilder::new().schema_type(Type::String).description(Some("16 hex characters")),
        )
        .required("object")
        .required("length")
        .required("sha256_prefix")
        .into()
}

/// A public `GET` (no key), answered in plain text.
fn public(operation_id: &str, summary: &str, description: &str, answers: &[(&str, &str)]) -> PathItem {
    let mut responses = ResponsesBuilder::new();
    for (status, text) in answers {
        let content = ContentBuilder::new().schema(Some(String::schema())).build();
        responses =
            responses.response(*status, ResponseBuilder::new().description(*text).content("text/plain", content));
    }
    let op = OperationBuilder::new()
        .operation_id(Some(operation_id))
        .summary(Some(summary))
        .description(Some(description))
        .tag("public")
        .security(SecurityRequirement::default())
        .responses(responses);
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
            "/v1/keygate/echo-auth",
            "/healthz",
            "/readyz",
            "/openai/deployments/{deployment-id}/chat/completions",
            "/openai/deployments/{deployment-id}/completions",
            "/openai/deployments/{deployment-id}/embeddings",
        ] {
            assert!(json["paths"][path].is_object(), "{path} missing");
        }
        let leaked = &json["paths"]["/v1/keys/leaked"]["post"];
        assert_eq!(leaked["security"], serde_json::json!([{}]), "the leak report takes no key: {leaked}");
        assert!(leaked["responses"]["202"].is_object(), "{leaked}");
        assert!(json["components"]["schemas"]["ProjectApiKeyObject"].is_object());
        assert!(json["components"]["schemas"]["ErrorResponse"].is_object());
        assert!(json["paths"].get("/metrics").is_none(), "/metrics is on the metrics listener, not this server");
        let azure = &json["paths"]["/openai/deployments/{deployment-id}/chat/completions"]["post"];
        assert_eq!(azure["security"], serde_json::json!([{"api-key": []}, {"bearer": []}]), "{azure}");
        let params: Vec<_> = azure["parameters"].as_array().unwrap().iter().map(|p| p["name"].clone()).collect();
        assert_eq!(params, ["deployment-id", "api-version"]);
    }

    #[test]
    fn every_operation_has_a_unique_operation_id_and_a_summary() {
        let json = serde_json::to_value(super::document()).unwrap();
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in json["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
                assert!(ids.insert(id.to_owned()), "{method} {path}: operationId `{id}` repeats");
                let summary = op["summary"].as_str().unwrap_or_default();
                assert!(!summary.is_empty() && !summary.contains('\n'), "{method} {path}: summary `{summary}`");
            }
        }
    }
}
