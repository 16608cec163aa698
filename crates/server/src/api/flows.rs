//! Flows: list, read, export, validate (flows:read); create, edit, publish, archive and
//! start for a contact (flows:write); their versions, runs and statistics; a contact's
//! runs, and releasing a contact an operator was handed (contacts:write).
//!
//! A draft is stored once it reads as a flow document; it may still have problems
//! (drafts are edited step by step), which every answer about it lists. Publishing is
//! where problems refuse: `422 invalid_flow` with `details.problems`.

use crate::api::query::{bad_param, decode_cursor, encode_cursor, QueryPairs};
use crate::api::{about_contact, ApiPath};
use crate::auth::{scope, Need, RequiredScope};
use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::AppState;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use voronka_core::flow::format::{self, Format};
use voronka_core::flow::validate::Problem;
use voronka_core::flow::FlowDocument;
use voronka_core::role::Scope;
use voronka_core::{ContactId, FlowId, RunId, WorkspaceId};
use voronka_engine::flows::PublishError;
use voronka_store::{Flow, FlowRun, FlowStatus, FlowVersion, RunQuery, RunStatus, StepCounter};

/// `flows:read`, for [`Need`].
#[derive(Debug, Clone, Copy)]
pub struct FlowsRead;

impl RequiredScope for FlowsRead {
    const SCOPE: Scope = Scope::FlowsRead;
}

/// `flows:write`, for [`Need`].
#[derive(Debug, Clone, Copy)]
pub struct FlowsWrite;

impl RequiredScope for FlowsWrite {
    const SCOPE: Scope = Scope::FlowsWrite;
}

/// Most runs `GET /contacts/{id}/runs` lists.
pub const CONTACT_RUNS_LIMIT: u32 = 100;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_flows, create_flow))
        .routes(routes!(validate_flow))
        .routes(routes!(get_flow, update_flow))
        .routes(routes!(publish_flow))
        .routes(routes!(archive_flow))
        .routes(routes!(get_flow_version))
        .routes(routes!(export_flow))
        .routes(routes!(list_flow_runs, start_flow_run))
        .routes(routes!(flow_stats))
        .routes(routes!(list_contact_runs))
        .routes(routes!(release_contact))
}

/// A flow to create. The document comes either as JSON (`document`) or as YAML text
/// (`yaml`); it must read as a flow document but may still have problems.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFlow {
    /// Name, 1 to 100 characters, unique in the workspace; defaults to the document's
    /// `name`.
    #[serde(default)]
    pub name: Option<String>,
    /// The flow document as JSON.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub document: Option<Value>,
    /// The flow document as YAML text.
    #[serde(default)]
    pub yaml: Option<String>,
}

/// The body of `POST /flows`: JSON (`CreateFlow`), or a YAML flow file as is
/// (`Content-Type: application/yaml`), named by its own `name`.
#[derive(Debug)]
pub struct CreateBody(pub CreateFlow);

impl<S: Send + Sync> axum::extract::FromRequest<S> for CreateBody {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let yaml = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                ct.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .is_some_and(|ct| {
                matches!(
                    ct.as_str(),
                    "application/yaml" | "application/x-yaml" | "text/yaml"
                )
            });
        if !yaml {
            return Json::<CreateFlow>::from_request(req, state)
                .await
                .map(|Json(b)| CreateBody(b));
        }
        let bytes = bytes::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is too large",
                )
            } else {
                ApiError::bad_request(format!("cannot read the request body: {}", e.body_text()))
            }
        })?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::validation("yaml", "the YAML body is not UTF-8 text"))?;
        Ok(CreateBody(CreateFlow {
            name: None,
            document: None,
            yaml: Some(text),
        }))
    }
}

/// Changes to a flow: an absent key is left alone.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateFlow {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New draft as JSON.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub document: Option<Value>,
    /// New draft as YAML text.
    #[serde(default)]
    pub yaml: Option<String>,
    /// The revision the change was made on; refused with 409 `flow_changed` when the
    /// flow has moved on since.
    #[serde(default)]
    pub revision: Option<i64>,
}

/// A flow document to check, as JSON (`document`) or YAML text (`yaml`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowSource {
    /// The flow document as JSON.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub document: Option<Value>,
    /// The flow document as YAML text.
    #[serde(default)]
    pub yaml: Option<String>,
}

/// A flow with the problems of its draft, checked against the workspace.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowView {
    /// The flow.
    #[serde(flatten)]
    pub flow: Flow,
    /// What keeps the draft from being published (empty when it can be).
    pub problems: Vec<Problem>,
}

/// The problems of a flow document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problems {
    /// Every problem found, in document order (empty for a good flow).
    pub problems: Vec<Problem>,
}

/// How many runs of a flow are in each status.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct RunCounts {
    /// Executing steps.
    pub active: u64,
    /// Waiting for time, an answer, a button or an operator.
    pub waiting: u64,
    /// Reached the end.
    pub done: u64,
    /// Ended by a stop step, STOP from the contact, or erasure.
    pub stopped: u64,
    /// Ended early by an exit rule, archiving or an operator.
    pub cancelled: u64,
    /// Ended by an error.
    pub failed: u64,
}

/// A flow's numbers: runs by status and per-step counters of every version.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowStats {
    /// Runs by status.
    pub runs: RunCounts,
    /// Per step and version: entered, completed, dropped, clicked.
    pub steps: Vec<StepCounter>,
}

/// A page of runs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunPage {
    /// Runs, newest first.
    pub data: Vec<FlowRun>,
    /// Pass as `before` for the next page; null when this page is not full.
    pub next_cursor: Option<String>,
}

/// A run to start for a contact.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// The contact.
    pub contact_id: ContactId,
    /// Data the run's steps read as `trigger` (`{{ trigger.order_id }}`); an object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

/// The answer to work handed to the flow runtime.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Queued {
    /// Always true: the runtime picks it up in the background.
    pub queued: bool,
}

/// Paging and filters of a flow's runs (documentation; parsed from the raw query).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RunParams {
    /// Only runs in this status.
    status: Option<RunStatus>,
    /// Only runs at this step (where they wait or ended).
    step: Option<String>,
    /// `next_cursor` of the previous page.
    before: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<u32>,
}

/// Whether archived flows are listed (documentation; parsed from the raw query).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListFlowsParams {
    /// Include archived flows (default false).
    archived: Option<bool>,
}

/// The format of an export (documentation; parsed from the raw query).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ExportParams {
    /// `yaml` (default) or `json`.
    format: Option<String>,
}

/// 422 `invalid_flow` carrying the problems in `details.problems`.
pub fn invalid_flow(message: impl Into<String>, problems: &[Problem]) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_flow", message).with_detail(
        "problems",
        serde_json::to_value(problems).unwrap_or_default(),
    )
}

/// Reads the document of a request given as `document` or `yaml` (none when neither).
fn read_source(document: Option<Value>, yaml: Option<String>) -> ApiResult<Option<FlowDocument>> {
    let unreadable = |field: &str, p: Problem| {
        invalid_flow(
            format!("the flow document cannot be read: {p}"),
            std::slice::from_ref(&p),
        )
        .with_detail("field", field)
    };
    match (document, yaml) {
        (Some(_), Some(_)) => Err(ApiError::validation(
            "yaml",
            "give the flow document either as `document` (JSON) or as `yaml`, not both",
        )),
        (Some(value), None) => format::from_value(value)
            .map(Some)
            .map_err(|p| unreadable("document", p)),
        (None, Some(text)) => format::parse(&text, Format::Yaml)
            .map(Some)
            .map_err(|p| unreadable("yaml", p)),
        (None, None) => Ok(None),
    }
}

fn required(doc: Option<FlowDocument>) -> ApiResult<FlowDocument> {
    doc.ok_or_else(|| {
        ApiError::validation(
            "document",
            "the flow document is required, as `document` (JSON) or `yaml` (text)",
        )
    })
}

/// The draft as stored: the document's own JSON form, so JSON and YAML input are kept
/// alike.
fn draft_of(doc: &FlowDocument) -> ApiResult<Value> {
    serde_json::to_value(doc).map_err(ApiError::internal)
}

/// Reads a stored draft; `Err` holds the problem when it does not read as a document.
fn document_of(flow: &Flow) -> Result<FlowDocument, Problem> {
    format::from_value(flow.draft.clone())
}

async fn view(state: &AppState, ws: WorkspaceId, flow: Flow) -> ApiResult<FlowView> {
    let problems = match document_of(&flow) {
        Ok(doc) => state.flows().validate(ws, &doc).await?,
        Err(p) => vec![p],
    };
    Ok(FlowView { flow, problems })
}

fn object(data: Option<Value>, field: &str) -> ApiResult<Value> {
    match data {
        None | Some(Value::Null) => Ok(Value::Object(Default::default())),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(ApiError::validation(field, "must be a JSON object")),
    }
}

/// Lists flows by name.
#[utoipa::path(get, path = "/flows", tag = "flows", operation_id = "listFlows",
    params(ListFlowsParams),
    responses((status = 200, description = "Flows with their drafts", body = Vec<Flow>)))]
pub async fn list_flows(
    State(state): State<AppState>,
    auth: Need<FlowsRead>,
    RawQuery(raw): RawQuery,
) -> ApiResult<axum::Json<Vec<Flow>>> {
    let q = QueryPairs::parse(raw.as_deref());
    q.only(&["archived"])?;
    let archived = q.parsed::<bool>("archived")?.unwrap_or(false);
    Ok(axum::Json(
        state.store().list_flows(auth.workspace, archived).await?,
    ))
}

/// Creates a draft flow. A document that does not read as a flow is refused with 422
/// `invalid_flow`; one that reads but has problems is kept, and the problems are listed.
#[utoipa::path(post, path = "/flows", tag = "flows", operation_id = "createFlow",
    request_body(description = "JSON, or a YAML flow file as is (`application/yaml`, named by its `name`)",
        content((CreateFlow = "application/json"), (String = "application/yaml"))),
    responses(
        (status = 201, description = "Created, with the draft's problems", body = FlowView),
        (status = 409, description = "`flow_name_taken`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_flow` (`details.problems`) or `validation_failed`", body = crate::error::ErrorBody)))]
pub async fn create_flow(
    State(state): State<AppState>,
    auth: Need<FlowsWrite>,
    CreateBody(body): CreateBody,
) -> ApiResult<(StatusCode, axum::Json<FlowView>)> {
    let doc = required(read_source(body.document, body.yaml)?)?;
    let name = match body.name {
        Some(name) => name,
        None if !doc.name.trim().is_empty() => doc.name.clone(),
        None => {
            return Err(ApiError::validation(
                "name",
                "a name is required (here or as the document's `name`)",
            ))
        }
    };
    let flow = state
        .store()
        .create_flow(auth.workspace, &name, draft_of(&doc)?)
        .await?;
    let view = view(&state, auth.workspace, flow).await?;
    Ok((StatusCode::CREATED, axum::Json(view)))
}

/// Reads a flow with the problems of its draft.
#[utoipa::path(get, path = "/flows/{id}", tag = "flows", operation_id = "getFlow",
    params(("id" = i64, Path, description = "Flow id")),
    responses((status = 200, description = "The flow", body = FlowView)))]
pub async fn get_flow(
    State(state): State<AppState>,
    auth: Need<FlowsRead>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<FlowView>> {
    let flow = state.store().get_flow(auth.workspace, FlowId(id)).await?;
    Ok(axum::Json(view(&state, auth.workspace, flow).await?))
}

/// Renames a flow and/or replaces its draft. With `revision`, refused with 409
/// `flow_changed` when someone else changed it meanwhile; 409 `flow_archived` for an
/// archived flow.
#[utoipa::path(patch, path = "/flows/{id}", tag = "flows", operation_id = "updateFlow",
    params(("id" = i64, Path, description = "Flow id")),
    request_body = UpdateFlow,
    responses(
        (status = 200, description = "The changed flow", body = FlowView),
        (status = 409, description = "`flow_changed`, `flow_archived` or `flow_name_taken`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_flow` (`details.problems`) or `validation_failed`", body = crate::error::ErrorBody)))]
pub async fn update_flow(
    State(state): State<AppState>,
    auth: Need<FlowsWrite>,
    ApiPath(id): ApiPath<i64>,
    Json(body): Json<UpdateFlow>,
) -> ApiResult<axum::Json<FlowView>> {
    let store = state.store();
    // Checked first so another workspace's flow is 404 whatever the body says.
    store.get_flow(auth.workspace, FlowId(id)).await?;
    let draft = read_source(body.document, body.yaml)?
        .map(|doc| draft_of(&doc))
        .transpose()?;
    let flow = store
        .update_flow(auth.workspace, FlowId(id), body.name, draft, body.revision)
        .await?;
    Ok(axum::Json(view(&state, auth.workspace, flow).await?))
}

/// Checks a flow document against the workspace without saving it. Problems are listed
/// with 200; only a document that does not read as a flow at all is 422 `invalid_flow`.
#[utoipa::path(post, path = "/flows/validate", tag = "flows", operation_id = "validateFlow",
    request_body = FlowSource,
    responses(
        (status = 200, description = "The document's problems (none for a good flow)", body = Problems),
        (status = 422, description = "`invalid_flow`: the document does not read as a flow (`details.problems`)", body = crate::error::ErrorBody)))]
pub async fn validate_flow(
    State(state): State<AppState>,
    auth: Need<FlowsRead>,
    Json(body): Json<FlowSource>,
) -> ApiResult<axum::Json<Problems>> {
    let doc = required(read_source(body.document, body.yaml)?)?;
    let problems = state.flows().validate(auth.workspace, &doc).await?;
    Ok(axum::Json(Problems { problems }))
}

/// Publishes the draft as the next version and makes its triggers live. Runs in flight
/// stay on their version. A draft with problems is refused with 422 `invalid_flow`.
#[utoipa::path(post, path = "/flows/{id}/publish", tag = "flows", operation_id = "publishFlow",
    params(("id" = i64, Path, description = "Flow id")),
    responses(
        (status = 200, description = "The new version", body = FlowVersion),
        (status = 409, description = "`flow_archived`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_flow`: the draft's problems are in `details.problems`", body = crate::error::ErrorBody)))]
pub async fn publish_flow(
    State(state): State<AppState>,
    auth: Need<FlowsWrite>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<FlowVersion>> {
    match state.flows().publish(auth.workspace, FlowId(id)).await {
        Ok(version) => Ok(axum::Json(version)),
        Err(PublishError::Invalid(problems)) => Err(invalid_flow(
            format!(
                "the flow cannot be published: it has {} problem(s)",
                problems.len()
            ),
            &problems,
        )),
        Err(PublishError::Store(e)) => Err(e.into()),
    }
}

/// Archives a flow: its triggers go off and its runs in flight are cancelled.
#[utoipa::path(post, path = "/flows/{id}/archive", tag = "flows", operation_id = "archiveFlow",
    params(("id" = i64, Path, description = "Flow id")),
    responses((status = 200, description = "The archived flow", body = Flow)))]
pub async fn archive_flow(
    State(state): State<AppState>,
    auth: Need<FlowsWrite>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<Flow>> {
    Ok(axum::Json(
        state.flows().archive(auth.workspace, FlowId(id)).await?,
    ))
}

/// Reads one published version of a flow.
#[utoipa::path(get, path = "/flows/{id}/versions/{version}", tag = "flows", operation_id = "getFlowVersion",
    params(("id" = i64, Path, description = "Flow id"), ("version" = u32, Path, description = "Version, from 1")),
    responses((status = 200, description = "The version", body = FlowVersion)))]
pub async fn get_flow_version(
    State(state): State<AppState>,
    auth: Need<FlowsRead>,
    ApiPath((id, version)): ApiPath<(i64, u32)>,
) -> ApiResult<axum::Json<FlowVersion>> {
    Ok(axum::Json(
        state
            .store()
            .get_flow_version(auth.workspace, FlowId(id), version)
            .await?,
    ))
}

/// The draft as a file: YAML (default) or JSON, for `voronka flow check` and version
/// control.
#[utoipa::path(get, path = "/flows/{id}/export", tag = "flows", operation_id = "exportFlow",
    params(("id" = i64, Path, description = "Flow id"), ExportParams),
    responses((status = 200, description = "The draft document",
        content((String = "text/yaml"), (Object = "application/json")))))]
pub async fn export_flow(
    State(state): State<AppState>,
    auth: Need<FlowsRead>,
    ApiPath(id): ApiPath<i64>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let q = QueryPairs::parse(raw.as_deref());
    q.only(&["format"])?;
    let format = match q.one("format")? {
        None | Some("yaml") => Format::Yaml,
        Some("json") => Format::Json,
        Some(_) => return Err(bad_param("format", "must be `yaml` or `json`")),
    };
    let flow = state.store().get_flow(auth.workspace, FlowId(id)).await?;
    let (content_type, extension, body) = match (format, document_of(&flow)) {
        (Format::Yaml, Ok(doc)) => ("text/yaml; charset=utf-8", "yaml", format::to_yaml(&doc)),
        (Format::Json, Ok(doc)) => ("application/json", "json", format::to_json_pretty(&doc)),
        // JSON can carry a draft as stored even when it no longer reads as a document.
        (Format::Json, Err(_)) => ("application/json", "json", flow.draft.to_string()),
        (Format::Yaml, Err(p)) => {
            return Err(invalid_flow(
                format!("the draft cannot be written as YAML: {p}"),
                std::slice::from_ref(&p),
            ))
        }
    };
    let mut res = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let disposition = format!("attachment; filename=\"flow-{id}.{extension}\"");
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

/// Lists a flow's runs, newest first, filtered by status and step.
#[utoipa::path(get, path = "/flows/{id}/runs", tag = "flows", operation_id = "listFlowRuns",
    params(("id" = i64, Path, description = "Flow id"), RunParams),
    responses((status = 200, description = "A page of runs", body = RunPage)))]
pub async fn list_flow_runs(
    State(state): State<AppState>,
    auth: Need<FlowsRead>,
    ApiPath(id): ApiPath<i64>,
    RawQuery(raw): RawQuery,
) -> ApiResult<axum::Json<RunPage>> {
    let q = QueryPairs::parse(raw.as_deref());
    q.only(&["status", "step", "before", "limit"])?;
    let limit = q.limit()?;
    let status = q.parsed::<RunStatus>("status")?;
    let step_id = q.one("step")?.map(str::to_string);
    let before = q
        .one("before")?
        .map(|c| {
            decode_cursor(c)
                .map_err(|_| bad_param("before", "is not a cursor returned by this API"))
        })
        .transpose()?
        .map(RunId);
    let store = state.store();
    // The store would answer an empty list for another workspace's flow.
    store.get_flow(auth.workspace, FlowId(id)).await?;
    let runs = store
        .list_runs(
            auth.workspace,
            RunQuery {
                flow_id: Some(FlowId(id)),
                contact_id: None,
                status,
                step_id,
                before,
                limit,
            },
        )
        .await?;
    let full = u32::try_from(runs.len()).is_ok_and(|n| n >= limit);
    let next_cursor = runs.last().filter(|_| full).map(|r| encode_cursor(r.id.0));
    Ok(axum::Json(RunPage {
        data: runs,
        next_cursor,
    }))
}

/// Starts the flow's live version for a contact now, subject to its re-entry rule. The
/// run is created in the background: 202.
#[utoipa::path(post, path = "/flows/{id}/runs", tag = "flows", operation_id = "startFlowRun",
    params(("id" = i64, Path, description = "Flow id")),
    request_body = StartRun,
    responses(
        (status = 202, description = "Queued", body = Queued),
        (status = 409, description = "`flow_not_published` or `flow_archived`", body = crate::error::ErrorBody)))]
pub async fn start_flow_run(
    State(state): State<AppState>,
    auth: Need<FlowsWrite>,
    ApiPath(id): ApiPath<i64>,
    Json(body): Json<StartRun>,
) -> ApiResult<Response> {
    let store = state.store();
    let flow = store.get_flow(auth.workspace, FlowId(id)).await?;
    store.get_contact(auth.workspace, body.contact_id).await?;
    if flow.status == FlowStatus::Archived {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "flow_archived",
            "the flow is archived; it cannot be changed or started",
        ));
    }
    if flow.published_version.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "flow_not_published",
            "the flow has no published version to start; publish it first",
        ));
    }
    let data = object(body.data, "data")?;
    state
        .flows()
        .start_for(auth.workspace, body.contact_id, flow.id, data)
        .await?;
    Ok(about_contact(
        StatusCode::ACCEPTED,
        &Queued { queued: true },
        body.contact_id,
    ))
}

/// Runs by status and per-step counters of every version of a flow.
#[utoipa::path(get, path = "/flows/{id}/stats", tag = "flows", operation_id = "getFlowStats",
    params(("id" = i64, Path, description = "Flow id")),
    responses((status = 200, description = "The flow's numbers", body = FlowStats)))]
pub async fn flow_stats(
    State(state): State<AppState>,
    auth: Need<FlowsRead>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<FlowStats>> {
    let store = state.store();
    let mut runs = RunCounts::default();
    for (status, n) in store.run_counts(auth.workspace, FlowId(id)).await? {
        let slot = match status {
            RunStatus::Active => &mut runs.active,
            RunStatus::Waiting => &mut runs.waiting,
            RunStatus::Done => &mut runs.done,
            RunStatus::Stopped => &mut runs.stopped,
            RunStatus::Cancelled => &mut runs.cancelled,
            RunStatus::Failed => &mut runs.failed,
        };
        *slot += n;
    }
    let steps = store.step_counters(auth.workspace, FlowId(id)).await?;
    Ok(axum::Json(FlowStats { runs, steps }))
}

/// A contact's runs through every flow, live and ended, newest first (the latest 100).
#[utoipa::path(get, path = "/contacts/{id}/runs", tag = "flows", operation_id = "listContactRuns",
    params(("id" = i64, Path, description = "Contact id")),
    responses((status = 200, description = "Runs", body = Vec<FlowRun>)))]
pub async fn list_contact_runs(
    State(state): State<AppState>,
    auth: Need<FlowsRead>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<Vec<FlowRun>>> {
    let store = state.store();
    store.get_contact(auth.workspace, ContactId(id)).await?;
    let runs = store
        .list_runs(
            auth.workspace,
            RunQuery {
                contact_id: Some(ContactId(id)),
                limit: CONTACT_RUNS_LIMIT,
                ..Default::default()
            },
        )
        .await?;
    Ok(axum::Json(runs))
}

/// Hands a contact back from an operator: their runs waiting at a handoff go on. Done
/// in the background: 202.
#[utoipa::path(post, path = "/contacts/{id}/release", tag = "flows", operation_id = "releaseContact",
    params(("id" = i64, Path, description = "Contact id")),
    responses((status = 202, description = "Queued", body = Queued)))]
pub async fn release_contact(
    State(state): State<AppState>,
    auth: Need<scope::ContactsWrite>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Response> {
    state
        .store()
        .get_contact(auth.workspace, ContactId(id))
        .await?;
    state.flows().release(auth.workspace, ContactId(id)).await?;
    Ok(about_contact(
        StatusCode::ACCEPTED,
        &Queued { queued: true },
        ContactId(id),
    ))
}
