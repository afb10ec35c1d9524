//! The API's OpenAPI 3.1 document, derived from the handlers' `#[utoipa::path]`
//! attributes and the types they read and answer, served at `GET /v1/openapi.json`
//! and committed as `openapi.json` (a test compares the two, and another checks that
//! every route of the router is in it).
//!
//! What every authenticated route answers alike — the bearer scheme, and `401`,
//! `403`, `429` and `500` with the error body — is added here, once, by
//! [`Common`]; a handler's attribute lists only what is its own.

use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder, content::ContentBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{access, bulk_cancel, jobs, metrics, secrets, views, workers};
use crate::error::Code;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/v1/openapi.json";

/// The document, as the API serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as committed: pretty JSON with a final newline.
pub fn document_json() -> String {
    let mut text = serde_json::to_string_pretty(&document()).expect("the document serializes");
    text.push('\n');
    text
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Slipway",
        description = "Submit, follow and manage build-and-run jobs: a git repository built into an image, \
                       pushed, and run as a container.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        jobs::submit, jobs::list, jobs::get, jobs::cancel, jobs::rerun, jobs::events, jobs::logs,
        bulk_cancel::cancel_matching, workers::list, super::healthz, super::openapi_json, metrics::metrics_text,
        access::create_project, access::list_projects, access::create_token, access::list_tokens,
        access::revoke_token, access::audit_log,
        secrets::put_secret, secrets::list_secrets, secrets::delete_secret,
        secrets::put_git_default, secrets::list_git_defaults, secrets::delete_git_default,
    ),
    components(schemas(ErrorBody, ErrorDetail, views::JobView)),
    modifiers(&Common),
    security(("bearer" = [])),
    tags(
        (name = "jobs", description = "Jobs: submit, read, follow, cancel, re-run"),
        (name = "workers", description = "The workers the orchestrators ping"),
        (name = "projects", description = "Projects, their tokens and the audit log"),
        (name = "secrets", description = "A project's secrets and default git credentials"),
        (name = "service", description = "Health, metrics and this document"),
    ),
)]
struct ApiDoc;

/// Every error: `{"error": {"code", "message", "field"}}`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code; the status follows from it.
    #[schema(schema_with = error_codes)]
    pub code: &'static str,
    pub message: String,
    /// The field of the request at fault, when one is.
    pub field: Option<String>,
}

fn error_codes() -> utoipa::openapi::schema::Object {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(Code::ALL.map(|c| c.as_str()))).build()
}

/// `run.runtime`: where the container runs.
pub(crate) fn runtime_kinds() -> utoipa::openapi::schema::Object {
    use slipway_steps::runtime::RuntimeKind;
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(RuntimeKind::ALL.map(|r| r.as_str())))
        .default(Some(RuntimeKind::default().as_str().into()))
        .build()
}

/// A project's id.
pub(crate) fn project_id() -> utoipa::openapi::schema::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Uuid)))
        .build()
}

/// The bearer scheme, and the answers every authenticated route may give.
struct Common;

impl Modify for Common {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("slp_<8 hex>_<64 hex>")
                    .description(Some("An API token (`slipway token create`)"))
                    .build(),
            ),
        );
        // Each answer is one component, referred to by every operation that gives it.
        let every = [
            ("400", "BadRequest", "A parameter is wrong; `field` names it"),
            ("401", "Unauthenticated", "No token, or one that is unknown, expired or revoked"),
            ("403", "Forbidden", "The token's role does not allow this"),
            ("429", "RateLimited", "Too many requests (or failed authentications) from this client; see Retry-After"),
            ("500", "Internal", "An internal error"),
            ("503", "Unavailable", "The database cannot be reached; try again"),
        ];
        let with_body = [
            ("408", "RequestTimeout", "The request body did not arrive in time"),
            ("413", "BodyTooLarge", "The request body is too large"),
            ("415", "UnsupportedMediaType", "The request body is not application/json"),
        ];
        for (_, name, description) in every.iter().chain(&with_body) {
            components.responses.insert(name.to_string(), error(description));
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") || path == OPENAPI_PATH {
                continue;
            }
            let operations = [
                ("GET", &mut item.get),
                ("POST", &mut item.post),
                ("PUT", &mut item.put),
                ("DELETE", &mut item.delete),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                if let Some(route) = super::ROUTES.iter().find(|r| r.method == method && r.path == path) {
                    let needs = format!("Needs a token of role `{}` or above.", route.role.as_str());
                    operation.description = Some(match operation.description.take() {
                        Some(text) => format!("{text}\n\n{needs}"),
                        None => needs,
                    });
                }
                let body = if operation.request_body.is_some() { &with_body[..] } else { &[] };
                for (status, name, _) in every.iter().chain(body) {
                    let reference = utoipa::openapi::Ref::from_response_name(*name);
                    operation.responses.responses.entry(status.to_string()).or_insert(reference.into());
                }
            }
        }
    }
}

/// A response with the error body.
pub(crate) fn error(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(ErrorBody::schema_ref())).build())
        .build()
        .into()
}

trait SchemaRef {
    fn schema_ref() -> RefOr<utoipa::openapi::schema::Schema>;
}

impl<T: ToSchema> SchemaRef for T {
    fn schema_ref() -> RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::Ref::from_schema_name(T::name()).into()
    }
}
