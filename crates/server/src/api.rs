//! `/api/v1`: JSON in, JSON out; every request carries `Authorization: Bearer <token>`.
//! Each handler's `#[utoipa::path]` both registers the route and documents it, so the
//! OpenAPI document served at `/api/v1/openapi.json` cannot drift from the routes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{OriginalUri, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use coalmine_pipeline::{Engine, PipelineError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::follow;
use crate::sampler::Sample;
use crate::{constant_time_eq, AppState};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "coalmine control plane",
        description = "The release pipeline of one app: executions and their stages, approvals, rollbacks, services and tasks, the queue and per-revision telemetry, logs. Every request needs `Authorization: Bearer <token>` with the token from `.coalmine/token`."
    ),
    servers((url = "/api/v1")),
    security(("token" = [])),
    modifiers(&BearerToken),
    tags(
        (name = "pipeline", description = "Executions, decisions and the app's spec"),
        (name = "services", description = "Services, tasks and their logs"),
        (name = "queue", description = "The queue, its DLQ and per-revision telemetry"),
        (name = "live", description = "Server-sent event streams"),
    )
)]
struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(status))
        .routes(routes!(spec))
        .routes(routes!(executions))
        .routes(routes!(execution))
        .routes(routes!(approve))
        .routes(routes!(reject))
        .routes(routes!(stop))
        .routes(routes!(retry))
        .routes(routes!(build_log))
        .routes(routes!(build_log_stream))
        .routes(routes!(rollback))
        .routes(routes!(trigger))
        .routes(routes!(rollbacks))
        .routes(routes!(events))
        .routes(routes!(events_stream))
        .routes(routes!(services))
        .routes(routes!(service))
        .routes(routes!(service_tasks))
        .routes(routes!(service_logs))
        .routes(routes!(service_logs_stream))
        .routes(routes!(task_logs))
        .routes(routes!(task_logs_stream))
        .routes(routes!(queue))
        .routes(routes!(dead_letters))
        .routes(routes!(redrive_all))
        .routes(routes!(in_flight))
        .routes(routes!(series))
        .routes(routes!(telemetry))
}

/// The OpenAPI document, with the paths as served (under `/api/v1`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_routes().into_openapi();
    // Paths are written relative to the server url `/api/v1`.
    doc.servers = Some(vec![utoipa::openapi::Server::new("/api/v1")]);
    doc
}

/// The API's routes, with the token check in front of every one of them.
pub fn router(shared: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let doc = Arc::new(openapi());
    let (api, _) = api_routes().split_for_parts();
    let served = doc.clone();
    let api = api
        .route("/openapi.json", axum::routing::get(move || async move { Json(served.as_ref().clone()) }))
        .fallback(|| async { ApiError::NotFound("no such API route: the routes are listed in /api/v1/openapi.json".into()) })
        // `layer`, not `route_layer`: unknown paths under /api/v1 need the token too.
        .layer(middleware::from_fn_with_state(shared.clone(), require_token))
        .with_state(shared);
    (Router::new().nest("/api/v1", api), doc.as_ref().clone())
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), state.token.as_bytes()) {
        let why = if given.is_empty() { "missing" } else { "wrong" };
        let path = req.extensions().get::<OriginalUri>().map(|u| u.0.path().to_string()).unwrap_or_else(|| req.uri().path().to_string());
        tracing::warn!(method = %req.method(), path = %path, "API request with a {why} token refused (401)");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": format!("{why} API token: send `Authorization: Bearer <token>` with the token from .coalmine/token")})),
        )
            .into_response();
    }
    next.run(req).await
}

/// An error, as every route returns it.
#[derive(Serialize, ToSchema)]
struct ErrorBody {
    /// What is wrong and how to fix it.
    error: String,
}

enum ApiError {
    Pipeline(PipelineError),
    BadRequest(String),
    NotFound(String),
    Internal(String),
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> Self {
        ApiError::Pipeline(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, msg) = match self {
            ApiError::Pipeline(e) => {
                let code = match &e {
                    PipelineError::Refused(_) => StatusCode::CONFLICT,
                    PipelineError::NoSuchExecution(_) => StatusCode::NOT_FOUND,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (code, e.to_string())
            }
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        };
        if code.is_server_error() {
            tracing::error!("API: {msg}");
        }
        (code, Json(ErrorBody { error: msg })).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok<T: Serialize>(v: T) -> ApiResult {
    Ok(Json(v).into_response())
}

/// Run a (blocking) engine call off the async workers.
async fn blocking<T: Send + 'static>(
    engine: &Arc<Engine>,
    f: impl FnOnce(&Engine) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || f(&engine))
        .await
        .map_err(|e| ApiError::Internal(format!("API handler panicked: {e}")))?
}

/// The whole picture: the app, the primary's revision, the current execution with its
/// stages, events and verdicts, the services with their tasks, and the queue's depth.
#[utoipa::path(get, path = "/status", tag = "pipeline",
    responses((status = 200, body = coalmine_pipeline::StatusView), (status = 401, body = ErrorBody)))]
async fn status(State(s): State<AppState>) -> ApiResult {
    ok(blocking(&s.engine, |e| Ok(e.status()?)).await?)
}

/// The app's parsed `coalmine.toml` with every default filled in.
#[utoipa::path(get, path = "/spec", tag = "pipeline",
    responses((status = 200, description = "AppSpec", body = Object), (status = 401, body = ErrorBody)))]
async fn spec(State(s): State<AppState>) -> ApiResult {
    ok(s.engine.spec())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Limit {
    /// How many, newest first (default 20).
    limit: Option<u32>,
}

/// Executions, newest first, each with its stages, approvals, verdicts, rollbacks and events.
#[utoipa::path(get, path = "/executions", tag = "pipeline", params(Limit),
    responses((status = 200, body = [coalmine_pipeline::ExecutionView]), (status = 401, body = ErrorBody)))]
async fn executions(State(s): State<AppState>, Query(q): Query<Limit>) -> ApiResult {
    let limit = q.limit.unwrap_or(20);
    ok(blocking(&s.engine, move |e| Ok(e.history(limit)?)).await?)
}

/// One execution with its stages, approvals, verdicts (with their numbers), rollbacks and events.
#[utoipa::path(get, path = "/executions/{id}", tag = "pipeline",
    params(("id" = i64, Path, description = "Execution number")),
    responses((status = 200, body = coalmine_pipeline::ExecutionView), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn execution(State(s): State<AppState>, Path(id): Path<i64>) -> ApiResult {
    ok(blocking(&s.engine, move |e| e.execution_view(id)?.ok_or(ApiError::Pipeline(PipelineError::NoSuchExecution(id)))).await?)
}

/// An approval decision.
#[derive(Deserialize, Default, ToSchema)]
struct Decision {
    /// Who decides (default `api`).
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    comment: String,
    /// The revision the decision was made for; refused (409) when the execution carries another.
    #[serde(default)]
    revision: Option<String>,
}

async fn decide(s: AppState, id: i64, approve: bool, d: Decision) -> ApiResult {
    let row = blocking(&s.engine, move |e| {
        if let Some(rev) = &d.revision {
            let Some(v) = e.execution_view(id)? else { return Err(PipelineError::NoSuchExecution(id).into()) };
            if &v.execution.revision != rev {
                return Err(PipelineError::Refused(format!(
                    "execution #{id} carries revision {}, not {rev}: the decision was made for another revision; look at the pipeline again and decide on what it shows now",
                    v.execution.revision
                ))
                .into());
            }
        }
        Ok(e.decide(id, approve, d.actor.as_deref().unwrap_or("api"), &d.comment)?)
    })
    .await?;
    ok(row)
}

/// Approve the revision waiting at the approval stage of this execution. Refused (409) when the
/// execution is not waiting for approval (superseded, already decided, ended).
#[utoipa::path(post, path = "/executions/{id}/approve", tag = "pipeline",
    params(("id" = i64, Path, description = "Execution number")), request_body(content = Decision, description = "optional"),
    responses((status = 200, body = coalmine_pipeline::store::ExecutionRow), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn approve(State(s): State<AppState>, Path(id): Path<i64>, body: Option<Json<Decision>>) -> ApiResult {
    decide(s, id, true, body.map(|b| b.0).unwrap_or_default()).await
}

/// Reject the revision waiting at the approval stage; the canary goes back to the primary's revision.
#[utoipa::path(post, path = "/executions/{id}/reject", tag = "pipeline",
    params(("id" = i64, Path, description = "Execution number")), request_body(content = Decision, description = "optional"),
    responses((status = 200, body = coalmine_pipeline::store::ExecutionRow), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn reject(State(s): State<AppState>, Path(id): Path<i64>, body: Option<Json<Decision>>) -> ApiResult {
    decide(s, id, false, body.map(|b| b.0).unwrap_or_default()).await
}

/// Who does something, and why.
#[derive(Deserialize, Default, ToSchema)]
struct Because {
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// Abandon an execution.
#[utoipa::path(post, path = "/executions/{id}/stop", tag = "pipeline",
    params(("id" = i64, Path, description = "Execution number")), request_body(content = Because, description = "optional"),
    responses((status = 200, body = coalmine_pipeline::store::ExecutionRow), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn stop(State(s): State<AppState>, Path(id): Path<i64>, body: Option<Json<Because>>) -> ApiResult {
    let b = body.map(|b| b.0).unwrap_or_default();
    let actor = b.actor.unwrap_or_else(|| "api".into());
    let reason = b.reason.unwrap_or_else(|| format!("stopped by {actor}"));
    ok(blocking(&s.engine, move |e| Ok(e.stop(id, &actor, &reason)?)).await?)
}

/// Run an ended execution's commit again, as a new execution (it supersedes or queues behind
/// the one in progress, as a new commit does). Answers the new execution.
#[utoipa::path(post, path = "/executions/{id}/retry", tag = "pipeline",
    params(("id" = i64, Path, description = "Execution number")), request_body(content = Because, description = "optional; `actor`"),
    responses((status = 200, body = coalmine_pipeline::store::ExecutionRow), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn retry(State(s): State<AppState>, Path(id): Path<i64>, body: Option<Json<Because>>) -> ApiResult {
    let actor = body.and_then(|b| b.0.actor).unwrap_or_else(|| "api".into());
    ok(blocking(&s.engine, move |e| Ok(e.retry(id, &actor)?)).await?)
}

/// Put the canary back on the primary's revision and end the execution in progress RolledBack.
#[utoipa::path(post, path = "/rollback", tag = "pipeline", request_body(content = Because, description = "optional"),
    responses((status = 200, body = coalmine_pipeline::store::ExecutionRow), (status = 409, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn rollback(State(s): State<AppState>, body: Option<Json<Because>>) -> ApiResult {
    let b = body.map(|b| b.0).unwrap_or_default();
    let actor = b.actor.unwrap_or_else(|| "api".into());
    let reason = b.reason.unwrap_or_else(|| format!("rolled back by {actor}"));
    ok(blocking(&s.engine, move |e| Ok(e.rollback(&actor, &reason)?)).await?)
}

#[derive(Serialize, ToSchema)]
struct Triggered {
    triggered: bool,
}

/// Look at the source branch now instead of at the next poll.
#[utoipa::path(post, path = "/trigger", tag = "pipeline",
    responses((status = 200, body = Triggered), (status = 401, body = ErrorBody)))]
async fn trigger(State(s): State<AppState>) -> ApiResult {
    s.engine.trigger();
    ok(Triggered { triggered: true })
}

/// Every rollback, oldest first, with who or what caused it, why, and the message counts.
#[utoipa::path(get, path = "/rollbacks", tag = "pipeline",
    responses((status = 200, body = [coalmine_pipeline::store::RollbackRow]), (status = 401, body = ErrorBody)))]
async fn rollbacks(State(s): State<AppState>) -> ApiResult {
    ok(blocking(&s.engine, |e| Ok(e.rollbacks()?)).await?)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct After {
    /// Only events with a larger id (default 0: from the start).
    after: Option<i64>,
}

/// Pipeline events (transitions, decisions, alarms), oldest first, at most 1000.
#[utoipa::path(get, path = "/events", tag = "pipeline", params(After),
    responses((status = 200, body = [coalmine_pipeline::store::EventRow]), (status = 401, body = ErrorBody)))]
async fn events(State(s): State<AppState>, Query(q): Query<After>) -> ApiResult {
    let after = q.after.unwrap_or(0);
    ok(blocking(&s.engine, move |e| Ok(e.events_after(after)?)).await?)
}

/// Live updates: event `snapshot` about once a second, data `{"status": StatusView, "sample": Sample}`.
#[utoipa::path(get, path = "/events/stream", tag = "live",
    responses((status = 200, description = "text/event-stream of `snapshot` events", content_type = "text/event-stream", body = String), (status = 401, body = ErrorBody)))]
async fn events_stream(State(s): State<AppState>) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let mut rx = s.snapshot.subscribe();
    // Send the current picture right away rather than at the next tick.
    let first = {
        let engine = s.engine.clone();
        let series = s.series.lock().unwrap().samples.back().cloned();
        tokio::task::spawn_blocking(move || {
            let status = engine.status().map(|v| serde_json::to_value(v).unwrap_or(Value::Null)).unwrap_or_else(|e| json!({"error": e.to_string()}));
            json!({"status": status, "sample": series}).to_string()
        })
        .await
        .unwrap_or_else(|_| "null".into())
    };
    rx.mark_unchanged();
    let start = futures_util::stream::once(async move { Ok(Event::default().event("snapshot").data(first)) });
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let data = rx.borrow_and_update().clone();
        Some((Ok(Event::default().event("snapshot").data(data.as_ref())), rx))
    });
    use futures_util::StreamExt;
    Sse::new(start.chain(rest)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Lines {
    /// How many of the last lines (build log: all by default; task logs: 50).
    lines: Option<usize>,
    /// Service logs: those of the tasks of the service's previous revision (after a rollback,
    /// the rolled-back revision's) instead of its current tasks.
    previous: Option<bool>,
}

/// The build log of an execution (its last lines), as plain text.
#[utoipa::path(get, path = "/executions/{id}/build-log", tag = "pipeline",
    params(("id" = i64, Path, description = "Execution number"), Lines),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn build_log(State(s): State<AppState>, Path(id): Path<i64>, Query(q): Query<Lines>) -> ApiResult {
    let path = s.engine.paths().build_log(id);
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => Ok(follow::tail(&text, q.lines.unwrap_or(usize::MAX)).into_response()),
        Err(_) => Err(ApiError::NotFound(format!("execution #{id} has no build log (yet): its build has not started, or there is no such execution"))),
    }
}

/// Follow the build log: its last lines, then each new line (event `line`), and `end` when the
/// execution's build is over.
#[utoipa::path(get, path = "/executions/{id}/build-log/stream", tag = "live",
    params(("id" = i64, Path, description = "Execution number"), Lines),
    responses((status = 200, content_type = "text/event-stream", body = String), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn build_log_stream(State(s): State<AppState>, Path(id): Path<i64>, Query(q): Query<Lines>) -> Result<Response, ApiError> {
    let exists = blocking(&s.engine, move |e| Ok(e.execution_view(id)?.is_some())).await?;
    if !exists {
        return Err(PipelineError::NoSuchExecution(id).into());
    }
    let path = s.engine.paths().build_log(id);
    let engine = s.engine.clone();
    let done = Box::new(move || match engine.execution_view(id) {
        Ok(Some(v)) => {
            v.execution.status != "InProgress"
                || v.stages.iter().any(|st| st.name == "Build" && st.finished_ms.is_some())
        }
        _ => true,
    });
    Ok(follow::stream(Box::new(move || vec![("build".into(), path.clone())]), done, q.lines.unwrap_or(200), false).into_response())
}

fn service_view(e: &Engine, name: &str) -> Result<coalmine_pipeline::ServiceView, ApiError> {
    e.status()?
        .services
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no service `{name}`: the services are `primary` and `canary`")))
}

/// The services (`primary`, `canary`): desired revision and task count, and what the runtime
/// reports (revision, deployments, tasks with state and restarts).
#[utoipa::path(get, path = "/services", tag = "services",
    responses((status = 200, body = [coalmine_pipeline::ServiceView]), (status = 401, body = ErrorBody)))]
async fn services(State(s): State<AppState>) -> ApiResult {
    ok(blocking(&s.engine, |e| Ok(e.status()?.services)).await?)
}

/// One service.
#[utoipa::path(get, path = "/services/{name}", tag = "services",
    params(("name" = String, Path, description = "`primary` or `canary`")),
    responses((status = 200, body = coalmine_pipeline::ServiceView), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn service(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    ok(blocking(&s.engine, move |e| service_view(e, &name)).await?)
}

/// The tasks of a service: id, pid, revision, state, restarts, last exit.
#[utoipa::path(get, path = "/services/{name}/tasks", tag = "services",
    params(("name" = String, Path, description = "`primary` or `canary`")),
    responses((status = 200, description = "[TaskStatus]", body = [Object]), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn service_tasks(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let v = blocking(&s.engine, move |e| service_view(e, &name)).await?;
    ok(v.status.map(|st| st.tasks).unwrap_or_default())
}

fn service_sources(engine: &Arc<Engine>, name: &str) -> Result<follow::Sources, ApiError> {
    if engine.runtime().service(name).is_none() {
        return Err(ApiError::NotFound(format!("no service `{name}` is running: the services are `primary` and `canary`")));
    }
    let engine = engine.clone();
    let name = name.to_string();
    Ok(Box::new(move || {
        let rt = engine.runtime();
        rt.service(&name)
            .map(|st| st.tasks.iter().filter_map(|t| rt.task_log(&t.id).map(|p| (t.id.clone(), p))).collect())
            .unwrap_or_default()
    }))
}

/// The last lines of the logs of every task of a service, each prefixed by `<task> | `.
#[utoipa::path(get, path = "/services/{name}/logs", tag = "services",
    params(("name" = String, Path, description = "`primary` or `canary`"), Lines),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn service_logs(State(s): State<AppState>, Path(name): Path<String>, Query(q): Query<Lines>) -> ApiResult {
    // Each backend reads its own log source (local files, CloudWatch Logs).
    let (previous, lines) = (q.previous.unwrap_or(false), q.lines.unwrap_or(50));
    let got = blocking(&s.engine, move |e| {
        let rt = e.runtime();
        if rt.service(&name).is_none() {
            return Err(ApiError::NotFound(format!("no service `{name}` is running: the services are `primary` and `canary`")));
        }
        rt.service_logs(&name, previous, lines)
            .ok_or_else(|| ApiError::NotFound(format!("the runtime of service `{name}` keeps no logs")))?
            .map_err(|e| match e {
                coalmine_runtime::RuntimeError::NothingToShow(why) => ApiError::NotFound(why),
                e => ApiError::Internal(e.to_string()),
            })
    })
    .await?;
    Ok(got.into_iter().map(|(task, line)| format!("{task} | {line}\n")).collect::<String>().into_response())
}

/// Follow the logs of every task of a service (tasks that start later included): event `line`
/// with data `<task> | <line>`.
#[utoipa::path(get, path = "/services/{name}/logs/stream", tag = "live",
    params(("name" = String, Path, description = "`primary` or `canary`"), Lines),
    responses((status = 200, content_type = "text/event-stream", body = String), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn service_logs_stream(State(s): State<AppState>, Path(name): Path<String>, Query(q): Query<Lines>) -> Result<Response, ApiError> {
    let sources = service_sources(&s.engine, &name)?;
    Ok(follow::stream(sources, Box::new(|| false), q.lines.unwrap_or(50), true).into_response())
}

fn task_log_path(engine: &Engine, task: &str) -> Result<std::path::PathBuf, ApiError> {
    if !coalmine_runtime::local::logs::valid_task_id(task) {
        let shown: String = task.chars().take(80).collect();
        return Err(ApiError::BadRequest(format!(
            "`{shown}` (path parameter id) is not a task id: task ids are `<service>-<number>`, e.g. `canary-3`; list them with GET /services/{{name}}/tasks"
        )));
    }
    let path = engine
        .runtime()
        .task_log(task)
        .filter(|p| p.exists())
        .ok_or_else(|| ApiError::NotFound(format!("no log for task `{task}`: task ids look like `canary-3`; list them with GET /services/{{name}}/tasks")))?;
    // Logs are read only under the state folder.
    let root = engine.paths().root.canonicalize().map_err(|e| ApiError::Internal(e.to_string()))?;
    match path.canonicalize() {
        Ok(real) if real.starts_with(&root) => Ok(real),
        _ => Err(ApiError::NotFound(format!("no log for task `{task}` under {}", root.display()))),
    }
}

/// The last lines of one task's log (tasks that exited included, while their log exists).
#[utoipa::path(get, path = "/tasks/{id}/logs", tag = "services",
    params(("id" = String, Path, description = "Task id, e.g. `canary-3`"), Lines),
    responses((status = 200, content_type = "text/plain", body = String), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn task_logs(State(s): State<AppState>, Path(id): Path<String>, Query(q): Query<Lines>) -> ApiResult {
    let path = task_log_path(&s.engine, &id)?;
    let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
    Ok(follow::tail(&text, q.lines.unwrap_or(50)).into_response())
}

/// Follow one task's log: event `line` per line.
#[utoipa::path(get, path = "/tasks/{id}/logs/stream", tag = "live",
    params(("id" = String, Path, description = "Task id, e.g. `canary-3`"), Lines),
    responses((status = 200, content_type = "text/event-stream", body = String), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn task_logs_stream(State(s): State<AppState>, Path(id): Path<String>, Query(q): Query<Lines>) -> Result<Response, ApiError> {
    let path = task_log_path(&s.engine, &id)?;
    Ok(follow::stream(Box::new(move || vec![(id.clone(), path.clone())]), Box::new(|| false), q.lines.unwrap_or(50), false).into_response())
}

/// The queue's depth now: visible, in flight, delayed, the oldest message's age, and the DLQ.
#[utoipa::path(get, path = "/queue", tag = "queue",
    responses((status = 200, body = crate::sampler::DepthSample), (status = 500, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn queue(State(s): State<AppState>) -> ApiResult {
    let d = blocking(&s.engine, |e| Ok(e.queue().depth().map_err(PipelineError::from)?)).await?;
    ok(crate::sampler::DepthSample::from(d))
}

/// The messages in the DLQ, each with the consumer (access key id: `CM.<service>.<revision>.<n>`)
/// that received it last.
#[utoipa::path(get, path = "/queue/dead-letters", tag = "queue",
    responses((status = 200, body = [coalmine_pipeline::queue_admin::DeadLetter]), (status = 500, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn dead_letters(State(s): State<AppState>) -> ApiResult {
    ok(blocking(&s.engine, |e| Ok(e.queue().dead_letters().map_err(PipelineError::from)?)).await?)
}

/// Move every message of the DLQ back to the app's queue — what the DLQ holds from healthy
/// revisions too (a rollback already redrives the bad revision's own). On SQS a message move
/// task does it (its handle is answered), or, where the endpoint has none, coalmine moves them.
#[utoipa::path(post, path = "/queue/redrive-all", tag = "queue", request_body(content = Because, description = "optional; `actor`"),
    responses((status = 200, body = coalmine_pipeline::queue_admin::RedriveAll), (status = 500, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn redrive_all(State(s): State<AppState>, body: Option<Json<Because>>) -> ApiResult {
    let actor = body.and_then(|b| b.0.actor).unwrap_or_else(|| "api".into());
    ok(blocking(&s.engine, move |e| Ok(e.redrive_all(&actor)?)).await?)
}

/// The messages held by consumers right now.
#[utoipa::path(get, path = "/queue/in-flight", tag = "queue",
    responses((status = 200, body = [coalmine_pipeline::queue_admin::InFlight]), (status = 500, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn in_flight(State(s): State<AppState>) -> ApiResult {
    ok(blocking(&s.engine, |e| Ok(e.telemetry().in_flight().map_err(PipelineError::from)?)).await?)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Window {
    /// How far back, in seconds (default 300; series keep 900).
    seconds: Option<u64>,
}

/// A time series, one sample a second.
#[derive(Serialize, ToSchema)]
struct Series {
    step_ms: u64,
    samples: Vec<Sample>,
}

/// Time series, one sample a second: the queue's and the DLQ's depth, and per revision the
/// messages received, processed, failed and dead-lettered in that second.
#[utoipa::path(get, path = "/series", tag = "queue", params(Window),
    responses((status = 200, body = Series), (status = 401, body = ErrorBody)))]
async fn series(State(s): State<AppState>, Query(q): Query<Window>) -> ApiResult {
    let since = coalmine_pipeline::now_ms().saturating_sub(q.seconds.unwrap_or(300) * 1000);
    let samples = s.series.lock().unwrap().since(since);
    ok(Series { step_ms: 1000, samples })
}

/// What one consumer (one task) did over a window.
#[derive(Serialize, ToSchema)]
struct ConsumerWindow {
    access_key_id: String,
    service: Option<String>,
    revision: Option<String>,
    task: Option<String>,
    received: u64,
    processed: u64,
    returned: u64,
    expired: u64,
    dead_lettered: u64,
    /// Receive-to-delete times, milliseconds (bucket upper bounds).
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

/// Per consumer (task), with its service and revision, totals over the last `seconds` (default 300).
#[utoipa::path(get, path = "/telemetry", tag = "queue", params(Window),
    responses((status = 200, body = [ConsumerWindow]), (status = 500, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn telemetry(State(s): State<AppState>, Query(q): Query<Window>) -> ApiResult {
    let since = coalmine_pipeline::now_ms().saturating_sub(q.seconds.unwrap_or(300) * 1000);
    let counts = blocking(&s.engine, move |e| Ok(e.telemetry().consumers(since).map_err(PipelineError::from)?)).await?;
    let out: Vec<ConsumerWindow> = counts
        .into_iter()
        .map(|c| {
            let id = coalmine_runtime::TaskIdentity::parse(&c.access_key_id);
            let lat = &c.latencies_ms;
            let q = |p: f64| lat.nth((lat.len().saturating_sub(1) as f64 * p).round() as u64);
            ConsumerWindow {
                service: id.as_ref().map(|i| i.service.clone()),
                revision: id.as_ref().map(|i| i.revision.clone()),
                task: id.as_ref().map(|i| i.task.clone()),
                access_key_id: c.access_key_id,
                received: c.received,
                processed: c.deleted,
                returned: c.returned,
                expired: c.expired,
                dead_lettered: c.dead_lettered,
                p50_ms: q(0.5),
                p99_ms: q(0.99),
            }
        })
        .collect();
    ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_describes_every_route_with_its_parameters() {
        let doc = serde_json::to_value(openapi()).unwrap();
        assert_eq!(doc["servers"][0]["url"], "/api/v1");
        assert_eq!(doc["components"]["securitySchemes"]["token"]["type"], "http");
        assert_eq!(doc["security"][0]["token"], json!([]));
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 28, "{:?}", paths.keys().collect::<Vec<_>>());
        assert!(paths["/queue/redrive-all"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].as_str().unwrap().ends_with("/RedriveAll"));
        assert!(paths["/executions/{id}/retry"]["post"]["responses"]["409"].is_object());
        let approve = &paths["/executions/{id}/approve"]["post"];
        assert_eq!(approve["parameters"][0]["name"], "id");
        assert_eq!(approve["parameters"][0]["in"], "path");
        assert!(approve["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str().unwrap().ends_with("/Decision"));
        assert!(approve["responses"]["409"].is_object());
        let logs = &paths["/services/{name}/logs"]["get"]["parameters"];
        let names: Vec<&str> = logs.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["name", "lines", "previous"]);
        assert!(doc["components"]["schemas"]["Sample"]["properties"]["revisions"].is_object());
        // Statuses are one enum, with one spelling each.
        let statuses: Vec<&str> = doc["components"]["schemas"]["Status"]["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(statuses, ["Queued", "Pending", "InProgress", "Succeeded", "Failed", "Superseded", "RolledBack", "Stopped"]);
        let outcomes = &doc["components"]["schemas"]["Outcome"]["enum"];
        assert_eq!(outcomes, &json!(["Pass", "Fail", "Inconclusive"]));
        assert!(paths["/events/stream"]["get"]["responses"]["200"]["content"]["text/event-stream"].is_object());
    }
}
