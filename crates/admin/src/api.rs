//! The endpoints. Each handler is annotated with what the OpenAPI document says of it; the
//! document is made from these annotations, so it cannot drift from the routes.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pillarbox_auth::{DirectoryError, DomainName, DomainRecord, format_expire};
use pillarbox_core::admin::{AdminError, NewPassword, Setting, user_name};
use pillarbox_proto::{Expire, Secret, UserName};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{AdminState, Caller, HealthParts, Limited, Problem, audit, forbidden};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Pillarbox admin API",
        description = "Users, domains, live sessions, usage and health of a Pillarbox service. \
                       Every request needs `Authorization: Bearer` with an admin token \
                       (`pillarbox admin token create`). Errors are RFC 9457 problem details.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&BearerToken),
    security(("token" = [])),
    tags(
        (name = "users", description = "The users of the service"),
        (name = "domains", description = "Mail domains"),
        (name = "sessions", description = "Live POP3 sessions"),
        (name = "service", description = "Health and the audit log"),
        (name = "console", description = "The web console's sign-in through the identity provider")
    )
)]
struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("pbx_<id>_<secret>")
                    .description(Some("An admin token from `pillarbox admin token create`."))
                    .build(),
            ),
        );
    }
}

/// Every error is a problem document (RFC 9457), whichever part answers it: each operation lists
/// the errors it can meet with `application/problem+json`, those of its own and the common ones
/// (no or a refused token, a rate limit, a request the router cannot read, a backend down).
struct Problems;

impl Modify for Problems {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::content::ContentBuilder;
        use utoipa::openapi::response::ResponseBuilder;
        use utoipa::openapi::{Ref, RefOr};
        let problem = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/problem+json",
                        ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
                    )
                    .build(),
            )
        };
        for (path, item) in &mut doc.paths.paths {
            let has_params = path.contains('{');
            let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for op in ops.into_iter().flatten() {
                let has_body = op.request_body.is_some();
                let mut common = vec![
                    ("400", "The request cannot be read (a query or body that does not parse)"),
                    ("401", "No token, or one that is unknown, revoked or expired"),
                    ("403", "The token's scopes do not allow this"),
                    ("429", "Too many requests from this address"),
                    ("500", "An internal error"),
                    ("503", "A backend (the database) cannot be reached now; try again later"),
                ];
                if has_params {
                    common.push(("404", "No such user, domain or session"));
                }
                if has_body {
                    common.push(("413", "The body is too large"));
                    common.push(("415", "The body is not JSON"));
                    common.push(("422", "The body is JSON but not a valid request"));
                }
                let responses = &mut op.responses.responses;
                for (status, response) in responses.iter_mut() {
                    if status.starts_with(['4', '5'])
                        && let RefOr::T(r) = response
                    {
                        let description = match r.description.as_str() {
                            "" => status
                                .parse::<u16>()
                                .ok()
                                .and_then(|s| StatusCode::from_u16(s).ok())
                                .and_then(|s| s.canonical_reason())
                                .unwrap_or("An error")
                                .to_owned(),
                            d => d.to_owned(),
                        };
                        *response = problem(&description);
                    }
                }
                for (status, description) in common {
                    responses.entry(status.to_owned()).or_insert_with(|| problem(description));
                }
            }
        }
    }
}

/// The OpenAPI document, as served.
pub fn openapi() -> utoipa::openapi::OpenApi {
    parts().1
}

/// The routes, and the document made from them (the error responses added once every route is
/// in it).
pub(crate) fn parts() -> (axum::Router<AdminState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = routes().split_for_parts();
    Problems.modify(&mut doc);
    (router, doc)
}

fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_users, add_user))
        .routes(routes!(show_user, delete_user))
        .routes(routes!(set_password))
        .routes(routes!(set_quota, clear_quota))
        .routes(routes!(set_retention))
        .routes(routes!(set_login_delay))
        .routes(routes!(set_enabled))
        .routes(routes!(user_usage))
        .routes(routes!(storage))
        .routes(routes!(list_domains, add_domain))
        .routes(routes!(show_domain, change_domain, delete_domain))
        .routes(routes!(list_sessions))
        .routes(routes!(end_session))
        .routes(routes!(health))
        .routes(routes!(list_audit))
        .routes(routes!(activity))
        .routes(routes!(me))
        .routes(routes!(console_sign_in))
        .routes(routes!(console_token))
}

fn problem_of(e: AdminError) -> Problem {
    let status = match &e {
        AdminError::NoSuchUser(_) | AdminError::Directory(DirectoryError::NoSuchDomain(_)) => StatusCode::NOT_FOUND,
        AdminError::Exists(_) | AdminError::Directory(DirectoryError::DomainExists(_) | DirectoryError::Refused(_)) => {
            StatusCode::CONFLICT
        }
        AdminError::BadName(_) | AdminError::Invalid(_) | AdminError::WeakPassword(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        AdminError::Directory(DirectoryError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Problem::new(status, e.to_string())
}

fn unavailable(e: impl std::fmt::Display) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// The domain a user belongs to (an alias resolved), if any.
async fn domain_of(state: &AdminState, name: &UserName) -> Result<Option<DomainName>, Problem> {
    let domains = state.services.domains().await.map_err(unavailable)?;
    Ok(match name.as_str().rsplit_once('@') {
        Some((_, d)) => domains.resolve(d).map(|(n, _)| n.clone()).or_else(|| DomainName::new(d).ok()),
        None => domains.domains.iter().find(|(_, r)| r.local).map(|(n, _)| n.clone()),
    })
}

fn parse_name(name: &str) -> Result<UserName, Problem> {
    user_name(name).map_err(problem_of)
}

/// The user named in a path: one that no user can have is not there (404), as for any other
/// user that does not exist.
fn path_user(name: &str) -> Result<UserName, Problem> {
    UserName::new(name).map_err(|_| Problem::new(StatusCode::NOT_FOUND, format!("no such user: {name}")))
}

/// Run a change of something in `domain` (`None`: the service's own) for `caller`: refused
/// without the scope; either way written to the audit log.
async fn change<T>(
    state: &AdminState,
    caller: &Caller,
    action: &str,
    target: &str,
    domain: Option<Option<&DomainName>>,
    work: impl Future<Output = Result<T, Problem>>,
) -> Result<T, Problem> {
    let allowed = match domain {
        Some(d) => caller.may_change(d),
        None => caller.admin().is_ok(),
    };
    if !allowed {
        audit(state, caller, action, target, "forbidden").await?;
        return Err(forbidden("this token's scopes do not allow this change"));
    }
    let result = work.await;
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err(p) => format!("{} {}", p.status, p.title),
    };
    audit(state, caller, action, target, &outcome).await?;
    result
}

/// A JSON merge patch body (RFC 7396): `application/merge-patch+json`, or `application/json`.
struct MergePatch<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for MergePatch<T> {
    type Rejection = Problem;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Problem> {
        let kind = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        if !matches!(kind.as_deref(), Some("application/merge-patch+json" | "application/json")) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the patch as application/merge-patch+json",
            ));
        }
        let bytes =
            axum::body::Bytes::from_request(req, state).await.map_err(|e| Problem::new(e.status(), e.body_text()))?;
        serde_json::from_slice(&bytes).map(MergePatch).map_err(|e| {
            let status = match e.classify() {
                serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::BAD_REQUEST,
            };
            Problem::new(status, format!("the patch cannot be read: {e}"))
        })
    }
}

/// A count in a request: a whole number the document's `int64` holds (so does PostgreSQL's
/// `bigint`, where a cluster keeps it); larger ones are refused, not wrapped.
#[derive(Debug, Clone, Copy)]
struct Count(u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        match i64::try_from(v) {
            Ok(_) => Ok(Count(v)),
            Err(_) => Err(serde::de::Error::custom(format!("{v} is too large (at most {})", i64::MAX))),
        }
    }
}

/// Days or seconds in a request: a whole number the document's `int32` holds.
#[derive(Debug, Clone, Copy)]
struct Span(u32);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        match i32::try_from(v) {
            Ok(_) => Ok(Span(v)),
            Err(_) => Err(serde::de::Error::custom(format!("{v} is too large (at most {})", i32::MAX))),
        }
    }
}

/// A field of a JSON merge patch: absent (`None`), `null` (`Some(None)`) or a value.
fn patch<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

// ---------------------------------------------------------------------------------------------
// Users

/// A user and the settings of their own (unset: the domain's or the server's default).
#[derive(Debug, Serialize, ToSchema)]
struct User {
    name: String,
    /// The mail domain the user belongs to.
    domain: Option<String>,
    /// Whether the user may log in.
    enabled: bool,
    /// Whether the user has an APOP secret.
    apop: bool,
    quota_bytes: Option<u64>,
    quota_messages: Option<u64>,
    /// Days after first retrieval, or `never` (RFC 2449 EXPIRE).
    expire: Option<String>,
    /// Seconds between logins (RFC 2449 LOGIN-DELAY).
    login_delay: Option<u32>,
}

fn user_view(e: &pillarbox_auth::Entry, domain: Option<&DomainName>) -> User {
    let r = &e.record;
    User {
        name: e.name.to_string(),
        domain: domain.map(ToString::to_string),
        enabled: !r.disabled,
        apop: r.apop_secret.is_some(),
        quota_bytes: r.quota_bytes,
        quota_messages: r.quota_messages,
        expire: r.expire.map(format_expire),
        login_delay: r.login_delay,
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct UserPage {
    /// Users that match, in all.
    total: usize,
    offset: usize,
    users: Vec<User>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UserQuery {
    /// Only names containing this (not case-sensitive).
    search: Option<String>,
    /// Only the users of this domain.
    domain: Option<String>,
    /// Users to skip.
    #[serde(default)]
    offset: usize,
    /// Most users returned (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// List users, in name order, a page at a time.
#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(UserQuery),
    responses((status = 200, body = UserPage), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_users(
    State(state): State<AdminState>,
    caller: Caller,
    Query(q): Query<UserQuery>,
) -> Result<Json<UserPage>, Problem> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "limit is 1 to 1000"));
    }
    let search = q.search.map(|s| s.to_lowercase());
    let (_, visible) = visible_users(&state, &caller, q.domain.as_deref()).await?;
    let matching: Vec<User> = visible
        .iter()
        .filter(|(e, _)| search.as_ref().is_none_or(|s| e.name.as_str().to_lowercase().contains(s)))
        .map(|(e, domain)| user_view(e, domain.as_ref()))
        .collect();
    let total = matching.len();
    let users = matching.into_iter().skip(q.offset).take(limit).collect();
    Ok(Json(UserPage { total, offset: q.offset, users }))
}

/// The users the caller may read, each with its domain, in name order; only those of `domain`
/// when a `domain=` filter names one (an alias stands for its domain).
async fn visible_users(
    state: &AdminState,
    caller: &Caller,
    domain: Option<&str>,
) -> Result<(Arc<pillarbox_auth::DomainSet>, Vec<(pillarbox_auth::Entry, Option<DomainName>)>), Problem> {
    let domains = state.services.domains().await.map_err(unavailable)?;
    let want = match domain {
        Some(d) => {
            let d = DomainName::new(d).map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e))?;
            Some(domains.resolve(d.as_str()).map_or(d, |(n, _)| n.clone()))
        }
        None => None,
    };
    if let Some(d) = &want
        && !caller.may_read(Some(d))
    {
        return Err(forbidden("this token's scopes do not cover that domain"));
    }
    let users = state.services.users().await.map_err(problem_of)?;
    let local = domains.domains.iter().find(|(_, r)| r.local).map(|(n, _)| n.clone());
    let mut visible = Vec::new();
    for e in users {
        let domain = match e.name.as_str().rsplit_once('@') {
            Some((_, d)) => domains.resolve(d).map(|(n, _)| n.clone()).or_else(|| DomainName::new(d).ok()),
            None => local.clone(),
        };
        if caller.may_read(domain.as_ref()) && want.as_ref().is_none_or(|w| domain.as_ref() == Some(w)) {
            visible.push((e, domain));
        }
    }
    Ok((domains, visible))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    /// The password (checked against the strength policy); or give `generate`.
    password: Option<String>,
    /// Make a strong random password, returned once in the answer.
    #[serde(default)]
    generate: bool,
}

#[derive(Debug, Serialize, ToSchema)]
struct PasswordSet {
    name: String,
    /// The generated password: shown only in this answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    generated_password: Option<String>,
}

fn new_password(password: Option<String>, generate: bool) -> Result<NewPassword, Problem> {
    match (password, generate) {
        (Some(p), false) => Ok(NewPassword::Given(Secret::new(p.into_bytes()))),
        (None, true) => Ok(NewPassword::Generate),
        _ => Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "give either password or \"generate\": true")),
    }
}

/// Add a user, with a given or generated password; the maildrop is made at once.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser,
    responses((status = 201, body = PasswordSet), (status = 409, body = Problem), (status = 422, body = Problem),
              (status = 403, body = Problem)))]
async fn add_user(
    State(state): State<AdminState>,
    caller: Caller,
    Json(body): Json<NewUser>,
) -> Result<(StatusCode, Json<PasswordSet>), Problem> {
    let name = parse_name(&body.name)?;
    let domain = domain_of(&state, &name).await?;
    let target = name.to_string();
    change(&state, &caller, "user.add", &target, Some(domain.as_ref()), async {
        let password = new_password(body.password, body.generate)?;
        let generated = state.services.add_user(&name, password).await.map_err(problem_of)?;
        Ok((StatusCode::CREATED, Json(PasswordSet { name: name.to_string(), generated_password: generated })))
    })
    .await
}

/// A user whose domain the caller may read.
async fn readable(state: &AdminState, caller: &Caller, name: &str) -> Result<(UserName, Option<DomainName>), Problem> {
    let name = path_user(name)?;
    let domain = domain_of(state, &name).await?;
    if !caller.may_read(domain.as_ref()) {
        // Not 404: the caller could tell which users exist elsewhere either way.
        return Err(forbidden("this token's scopes do not cover this user's domain"));
    }
    Ok((name, domain))
}

/// One user.
#[utoipa::path(get, path = "/api/v1/users/{name}", tag = "users", params(("name" = String, Path, description = "The user's name")),
    responses((status = 200, body = User), (status = 404, body = Problem), (status = 403, body = Problem)))]
async fn show_user(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<User>, Problem> {
    let (name, domain) = readable(&state, &caller, &name).await?;
    match state.services.directory.lookup(&name).await {
        Ok(Some(e)) => Ok(Json(user_view(&e, domain.as_ref()))),
        Ok(None) => Err(problem_of(AdminError::NoSuchUser(name))),
        Err(e) => Err(problem_of(e.into())),
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct Removed {
    name: String,
    /// Where the user's mail is kept (it is not removed).
    maildrop_kept: String,
}

/// Remove a user; their mail is kept.
#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "users", params(("name" = String, Path, description = "The user's name")),
    responses((status = 200, body = Removed), (status = 404, body = Problem), (status = 403, body = Problem)))]
async fn delete_user(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Removed>, Problem> {
    let name = path_user(&name)?;
    let domain = domain_of(&state, &name).await?;
    change(&state, &caller, "user.delete", name.as_str(), Some(domain.as_ref()), async {
        let kept = state.services.remove_user(&name).await.map_err(problem_of)?;
        Ok(Json(Removed { name: name.to_string(), maildrop_kept: kept }))
    })
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewPasswordBody {
    password: Option<String>,
    #[serde(default)]
    generate: bool,
}

/// Set a user's password (given, or generated and returned once).
#[utoipa::path(put, path = "/api/v1/users/{name}/password", tag = "users", request_body = NewPasswordBody,
    params(("name" = String, Path, description = "The user's name")),
    responses((status = 200, body = PasswordSet), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn set_password(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<NewPasswordBody>,
) -> Result<Json<PasswordSet>, Problem> {
    let name = path_user(&name)?;
    let domain = domain_of(&state, &name).await?;
    change(&state, &caller, "user.password", name.as_str(), Some(domain.as_ref()), async {
        let password = new_password(body.password, body.generate)?;
        let generated = state.services.set_password(&name, password).await.map_err(problem_of)?;
        Ok(Json(PasswordSet { name: name.to_string(), generated_password: generated }))
    })
    .await
}

/// Change one setting of a user, as the caller may, and answer with the user as they are now.
async fn set_user(
    state: &AdminState,
    caller: &Caller,
    name: &str,
    action: &str,
    setting: Setting,
) -> Result<Json<User>, Problem> {
    let name = path_user(name)?;
    let domain = domain_of(state, &name).await?;
    change(state, caller, action, name.as_str(), Some(domain.as_ref()), async {
        state.services.set(&name, setting).await.map_err(problem_of)?;
        match state.services.directory.lookup(&name).await {
            Ok(Some(e)) => Ok(Json(user_view(&e, domain.as_ref()))),
            Ok(None) => Err(problem_of(AdminError::NoSuchUser(name.clone()))),
            Err(e) => Err(problem_of(e.into())),
        }
    })
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct QuotaBody {
    /// Most octets the maildrop may hold; 0: no limit. Absent: unchanged.
    #[schema(value_type = Option<u64>)]
    bytes: Option<Count>,
    /// Most messages; 0: no limit. Absent: unchanged.
    #[schema(value_type = Option<u64>)]
    messages: Option<Count>,
}

/// Set a user's quota.
#[utoipa::path(put, path = "/api/v1/users/{name}/quota", tag = "users", request_body = QuotaBody,
    params(("name" = String, Path, description = "The user's name")),
    responses((status = 200, body = User), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn set_quota(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<QuotaBody>,
) -> Result<Json<User>, Problem> {
    set_user(
        &state,
        &caller,
        &name,
        "user.quota",
        Setting::Quota { bytes: body.bytes.map(|c| c.0), messages: body.messages.map(|c| c.0) },
    )
    .await
}

/// Remove a user's own quota (the domain's or server's applies again).
#[utoipa::path(delete, path = "/api/v1/users/{name}/quota", tag = "users",
    params(("name" = String, Path, description = "The user's name")),
    responses((status = 200, body = User), (status = 404, body = Problem)))]
async fn clear_quota(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<User>, Problem> {
    set_user(&state, &caller, &name, "user.quota", Setting::ClearQuota).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RetentionBody {
    /// Days after first retrieval (0: at the end of the session), `"never"`, or `null` for the
    /// default.
    expire: Option<Retention>,
}

/// Set a user's retention (RFC 2449 EXPIRE).
#[utoipa::path(put, path = "/api/v1/users/{name}/retention", tag = "users", request_body = RetentionBody,
    params(("name" = String, Path, description = "The user's name")),
    responses((status = 200, body = User), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn set_retention(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<RetentionBody>,
) -> Result<Json<User>, Problem> {
    let expire = retention(body.expire)?;
    set_user(&state, &caller, &name, "user.retention", Setting::Expire(expire)).await
}

/// A retention: days after first retrieval (0: at the end of the session), or `"never"`.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(untagged)]
enum Retention {
    Days(u32),
    Word(Never),
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
enum Never {
    #[serde(rename = "never")]
    Never,
}

/// The retention asked for; days beyond the document's `int32` are refused.
fn retention(v: Option<Retention>) -> Result<Option<Expire>, Problem> {
    match v {
        None => Ok(None),
        Some(Retention::Days(d)) if i32::try_from(d).is_err() => {
            Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{d} days is too many (at most {})", i32::MAX)))
        }
        Some(Retention::Days(d)) => Ok(Some(Expire::Days(d))),
        Some(Retention::Word(Never::Never)) => Ok(Some(Expire::Never)),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LoginDelayBody {
    /// Seconds between logins; `null`: the server's default.
    #[schema(value_type = Option<u32>)]
    seconds: Option<Span>,
}

/// Set the seconds a user must wait between logins (RFC 2449 LOGIN-DELAY).
#[utoipa::path(put, path = "/api/v1/users/{name}/login-delay", tag = "users", request_body = LoginDelayBody,
    params(("name" = String, Path, description = "The user's name")),
    responses((status = 200, body = User), (status = 404, body = Problem)))]
async fn set_login_delay(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<LoginDelayBody>,
) -> Result<Json<User>, Problem> {
    set_user(&state, &caller, &name, "user.login-delay", Setting::LoginDelay(body.seconds.map(|s| s.0))).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct EnabledBody {
    enabled: bool,
}

/// Turn a user's logins off or on (mail is delivered either way).
#[utoipa::path(put, path = "/api/v1/users/{name}/enabled", tag = "users", request_body = EnabledBody,
    params(("name" = String, Path, description = "The user's name")),
    responses((status = 200, body = User), (status = 404, body = Problem)))]
async fn set_enabled(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<EnabledBody>,
) -> Result<Json<User>, Problem> {
    let action = if body.enabled { "user.enable" } else { "user.disable" };
    set_user(&state, &caller, &name, action, Setting::Disabled(!body.enabled)).await
}

/// What a user's maildrop holds, and the limits in force.
#[derive(Debug, Serialize, ToSchema)]
struct Usage {
    name: String,
    messages: u64,
    /// Octets, as POP3's STAT counts them.
    bytes: u64,
    /// The quota in force (the user's, the domain's or the server's); absent: no limit.
    quota_bytes: Option<u64>,
    quota_messages: Option<u64>,
}

/// How much mail a user has.
#[utoipa::path(get, path = "/api/v1/users/{name}/usage", tag = "users",
    params(("name" = String, Path, description = "The user's name")),
    responses((status = 200, body = Usage), (status = 404, body = Problem)))]
async fn user_usage(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Usage>, Problem> {
    let (name, _) = readable(&state, &caller, &name).await?;
    let entry = match state.services.directory.lookup(&name).await {
        Ok(Some(e)) => e,
        Ok(None) => return Err(problem_of(AdminError::NoSuchUser(name))),
        Err(e) => return Err(problem_of(e.into())),
    };
    let domains = state.services.domains().await.map_err(unavailable)?;
    Ok(Json(usage_of(&state, &entry, &domains).await?))
}

/// A user's usage from the store, with the quota in force (the user's, else the domain's, else
/// the server's).
async fn usage_of(
    state: &AdminState,
    entry: &pillarbox_auth::Entry,
    domains: &pillarbox_auth::DomainSet,
) -> Result<Usage, Problem> {
    let used = state
        .services
        .store
        .usage(&entry.name)
        .await
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let domain = domains.of_user(&entry.name);
    let policy = state.services.policy();
    let limit = |own: Option<u64>, dom: Option<u64>, server: u64| own.or(dom).or(Some(server)).filter(|&q| q > 0);
    Ok(Usage {
        name: entry.name.to_string(),
        messages: used.messages,
        bytes: used.bytes,
        quota_bytes: limit(entry.record.quota_bytes, domain.and_then(|d| d.quota_bytes), policy.delivery.quota_bytes),
        quota_messages: limit(
            entry.record.quota_messages,
            domain.and_then(|d| d.quota_messages),
            policy.delivery.quota_messages,
        ),
    })
}

#[derive(Debug, Serialize, ToSchema)]
struct Storage {
    /// Users counted (those the token may read, of the domain asked for).
    users: usize,
    /// Octets stored by all of them.
    bytes: u64,
    messages: u64,
    /// The users storing the most, largest first.
    largest: Vec<Usage>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StorageQuery {
    /// Only the users of this domain.
    domain: Option<String>,
    /// How many of the largest users to list (default 20, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Storage per user, from the store: the totals and the users storing the most. Reads every
/// counted user's maildrop size (a directory listing each, or one query in a cluster).
#[utoipa::path(get, path = "/api/v1/storage", tag = "users", params(StorageQuery),
    responses((status = 200, body = Storage), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn storage(
    State(state): State<AdminState>,
    caller: Caller,
    Query(q): Query<StorageQuery>,
) -> Result<Json<Storage>, Problem> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "limit is 1 to 1000"));
    }
    let (domains, visible) = visible_users(&state, &caller, q.domain.as_deref()).await?;
    let mut all = Vec::with_capacity(visible.len());
    for (e, _) in &visible {
        all.push(usage_of(&state, e, &domains).await?);
    }
    let (bytes, messages) =
        all.iter().fold((0u64, 0u64), |(b, m), u| (b.saturating_add(u.bytes), m.saturating_add(u.messages)));
    let counted = all.len();
    all.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    all.truncate(limit);
    Ok(Json(Storage { users: counted, bytes, messages, largest: all }))
}

// ---------------------------------------------------------------------------------------------
// Domains

#[derive(Debug, Serialize, ToSchema)]
struct Domain {
    name: String,
    /// Users of the domain.
    users: usize,
    /// Kept in the domain registry (`pillarbox domain add`); else named by the configuration.
    registered: bool,
    /// Whether its users may log in over POP3.
    pop3: bool,
    quota_bytes: Option<u64>,
    quota_messages: Option<u64>,
    expire: Option<String>,
    aliases: Vec<String>,
    /// Server names whose connections log in to this domain.
    names: Vec<String>,
}

fn domain_view(d: &pillarbox_core::domains::DomainInfo) -> Domain {
    let r = &d.record;
    Domain {
        name: d.name.to_string(),
        users: d.users,
        registered: d.registered,
        pop3: r.pop3,
        quota_bytes: r.quota_bytes,
        quota_messages: r.quota_messages,
        expire: r.expire.map(format_expire),
        aliases: r.aliases.iter().map(ToString::to_string).collect(),
        names: r.names.iter().map(ToString::to_string).collect(),
    }
}

/// Every domain the caller may see.
#[utoipa::path(get, path = "/api/v1/domains", tag = "domains",
    responses((status = 200, body = Vec<Domain>), (status = 401, body = Problem)))]
async fn list_domains(State(state): State<AdminState>, caller: Caller) -> Result<Json<Vec<Domain>>, Problem> {
    let all = state.services.domain_list().await.map_err(problem_of)?;
    Ok(Json(all.iter().filter(|d| caller.may_read(Some(&d.name))).map(domain_view).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewDomain {
    name: String,
    #[schema(value_type = Option<u64>)]
    quota_bytes: Option<Count>,
    #[schema(value_type = Option<u64>)]
    quota_messages: Option<Count>,
    /// Days, `"never"`, or absent for the server's default.
    expire: Option<Retention>,
    /// Default true.
    pop3: Option<bool>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    names: Vec<String>,
}

fn domain_names(v: &[String]) -> Result<std::collections::BTreeSet<DomainName>, Problem> {
    v.iter().map(|n| DomainName::new(n).map_err(|e| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e))).collect()
}

/// Add a domain.
#[utoipa::path(post, path = "/api/v1/domains", tag = "domains", request_body = NewDomain,
    responses((status = 201, body = Domain), (status = 409, body = Problem), (status = 422, body = Problem),
              (status = 403, body = Problem)))]
async fn add_domain(
    State(state): State<AdminState>,
    caller: Caller,
    Json(body): Json<NewDomain>,
) -> Result<(StatusCode, Json<Domain>), Problem> {
    let target = body.name.clone();
    change(&state, &caller, "domain.add", &target, None, async {
        let record = DomainRecord {
            quota_bytes: body.quota_bytes.map(|c| c.0),
            quota_messages: body.quota_messages.map(|c| c.0),
            expire: retention(body.expire)?,
            pop3: body.pop3.unwrap_or(true),
            aliases: domain_names(&body.aliases)?,
            names: domain_names(&body.names)?,
            local: false,
        };
        let name = state.services.add_domain(&body.name, record).await.map_err(problem_of)?;
        Ok((StatusCode::CREATED, Json(find_domain(&state, &name).await?)))
    })
    .await
}

async fn find_domain(state: &AdminState, name: &DomainName) -> Result<Domain, Problem> {
    let all = state.services.domain_list().await.map_err(problem_of)?;
    all.iter()
        .find(|d| &d.name == name)
        .map(domain_view)
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, format!("no such domain: {name}")))
}

/// The domain named in a path (one that cannot be a domain's name is not there: 404).
fn parse_domain(name: &str) -> Result<DomainName, Problem> {
    DomainName::new(name).map_err(|_| Problem::new(StatusCode::NOT_FOUND, format!("no such domain: {name}")))
}

/// One domain.
#[utoipa::path(get, path = "/api/v1/domains/{name}", tag = "domains",
    params(("name" = String, Path, description = "The domain")),
    responses((status = 200, body = Domain), (status = 404, body = Problem), (status = 403, body = Problem)))]
async fn show_domain(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Domain>, Problem> {
    let name = parse_domain(&name)?;
    if !caller.may_read(Some(&name)) {
        return Err(forbidden("this token's scopes do not cover that domain"));
    }
    Ok(Json(find_domain(&state, &name).await?))
}

/// A JSON merge patch (RFC 7396) of a domain: absent fields are unchanged, `null` clears one.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DomainPatch {
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<u64>)]
    quota_bytes: Option<Option<Count>>,
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<u64>)]
    quota_messages: Option<Option<Count>>,
    /// Days, `"never"`, or `null` for the server's default.
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<Retention>)]
    expire: Option<Option<Retention>>,
    pop3: Option<bool>,
    /// The aliases, all of them.
    aliases: Option<Vec<String>>,
    /// The server names, all of them.
    names: Option<Vec<String>>,
}

/// Change a domain's settings. A domain's own scope may change its quotas, retention and POP3
/// access; aliases and names need the admin scope.
#[utoipa::path(patch, path = "/api/v1/domains/{name}", tag = "domains", request_body(content = DomainPatch, content_type = "application/merge-patch+json"),
    params(("name" = String, Path, description = "The domain")),
    responses((status = 200, body = Domain), (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)))]
async fn change_domain(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    MergePatch(body): MergePatch<DomainPatch>,
) -> Result<Json<Domain>, Problem> {
    let name = parse_domain(&name)?;
    let scope = if body.aliases.is_some() || body.names.is_some() { None } else { Some(Some(&name)) };
    change(&state, &caller, "domain.change", name.as_str(), scope, async {
        let expire = body.expire.map(retention).transpose()?;
        let aliases = body.aliases.as_deref().map(domain_names).transpose()?;
        let names = body.names.as_deref().map(domain_names).transpose()?;
        let count = |c: Option<Option<Count>>| c.map(|c| c.map(|c| c.0));
        let (qb, qm, pop3) = (count(body.quota_bytes), count(body.quota_messages), body.pop3);
        let edit = Box::new(move |r: &mut DomainRecord| {
            if let Some(q) = qb {
                r.quota_bytes = q;
            }
            if let Some(q) = qm {
                r.quota_messages = q;
            }
            if let Some(e) = expire {
                r.expire = e;
            }
            if let Some(p) = pop3 {
                r.pop3 = p;
            }
            if let Some(a) = aliases {
                r.aliases = a;
            }
            if let Some(n) = names {
                r.names = n;
            }
        });
        state.services.change_domain(name.as_str(), edit).await.map_err(problem_of)?;
        Ok(Json(find_domain(&state, &name).await?))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeleteDomainQuery {
    /// Remove the domain even though it has users (no mail reaches them then).
    #[serde(default)]
    force: bool,
}

#[derive(Debug, Serialize, ToSchema)]
struct DomainRemoved {
    name: String,
    /// Users the domain had (they are kept).
    users: usize,
}

/// Remove a domain from the registry (refused while it has users, unless `force`).
#[utoipa::path(delete, path = "/api/v1/domains/{name}", tag = "domains",
    params(("name" = String, Path, description = "The domain"), DeleteDomainQuery),
    responses((status = 200, body = DomainRemoved), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn delete_domain(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<DeleteDomainQuery>,
) -> Result<Json<DomainRemoved>, Problem> {
    let target = name.clone();
    change(&state, &caller, "domain.delete", &target, None, async {
        parse_domain(&name)?;
        let users = state.services.remove_domain(&name, q.force).await.map_err(problem_of)?;
        Ok(Json(DomainRemoved { name, users }))
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Sessions, health, audit

#[derive(Debug, Serialize, ToSchema)]
struct Session {
    id: String,
    user: String,
    /// The client's address and port.
    client: String,
    tls: bool,
    /// `USER/PASS`, `APOP` or the SASL mechanism.
    mechanism: String,
    /// Seconds since the epoch.
    started_at: u64,
    /// The node serving it.
    node: String,
}

async fn sessions_for(
    state: &AdminState,
    caller: &Caller,
) -> Result<Vec<pillarbox_core::sessions::SessionInfo>, Problem> {
    let all = state.services.sessions.list().await.map_err(unavailable)?;
    let mut out = Vec::new();
    for s in all {
        let domain = match UserName::new(&s.user) {
            Ok(n) => domain_of(state, &n).await?,
            Err(_) => None,
        };
        if caller.may_read(domain.as_ref()) {
            out.push(s);
        }
    }
    Ok(out)
}

/// The live POP3 sessions (of every node), oldest first.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions",
    responses((status = 200, body = Vec<Session>), (status = 401, body = Problem)))]
async fn list_sessions(State(state): State<AdminState>, caller: Caller) -> Result<Json<Vec<Session>>, Problem> {
    let list = sessions_for(&state, &caller).await?;
    Ok(Json(
        list.into_iter()
            .map(|s| Session {
                id: s.id,
                user: s.user,
                client: s.client,
                tls: s.tls,
                mechanism: s.mechanism,
                started_at: s.started_at,
                node: s.node,
            })
            .collect(),
    ))
}

/// End a live session: the client is told and disconnected, and nothing it marked for deletion
/// is deleted.
#[utoipa::path(delete, path = "/api/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    responses((status = 204, description = "Ended"), (status = 404, body = Problem), (status = 403, body = Problem)))]
async fn end_session(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let all = state.services.sessions.list().await.map_err(unavailable)?;
    let Some(session) = all.into_iter().find(|s| s.id == id) else {
        return Err(Problem::new(StatusCode::NOT_FOUND, "no live session has that id"));
    };
    let domain = match UserName::new(&session.user) {
        Ok(n) => domain_of(&state, &n).await?,
        Err(_) => None,
    };
    let target = format!("{} ({})", session.id, session.user);
    change(&state, &caller, "session.end", &target, Some(domain.as_ref()), async {
        match state.services.sessions.end(&id).await.map_err(unavailable)? {
            true => Ok(StatusCode::NO_CONTENT.into_response()),
            false => Err(Problem::new(StatusCode::NOT_FOUND, "the session has already ended")),
        }
    })
    .await
}

#[derive(Debug, Serialize, ToSchema)]
struct HealthReport {
    /// `ok`, or `degraded` when a part is failing.
    status: String,
    version: String,
    /// This node's name.
    node: String,
    /// Whether the user directory answers (the database, in a cluster).
    directory: Check,
    /// Whether the mail domains can be read.
    domains: Check,
    /// Live sessions (every node's).
    sessions: Option<usize>,
    #[serde(flatten)]
    parts: HealthParts,
}

#[derive(Debug, Serialize, ToSchema)]
struct Check {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn check<T, E: std::fmt::Display>(r: &Result<T, E>) -> Check {
    Check { ok: r.is_ok(), error: r.as_ref().err().map(ToString::to_string) }
}

/// The service's health: its backends, listeners, certificates and recent errors.
#[utoipa::path(get, path = "/api/v1/health", tag = "service",
    responses((status = 200, body = HealthReport), (status = 401, body = Problem)))]
async fn health(State(state): State<AdminState>, caller: Caller) -> Result<Json<HealthReport>, Problem> {
    caller.read_all()?;
    let probe =
        UserName::new("health-probe").map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let directory = check(&state.services.directory.lookup(&probe).await);
    let domains = check(&state.services.domains().await);
    let sessions = state.services.sessions.list().await;
    let parts = state.health.report();
    let failing =
        !directory.ok || !domains.ok || sessions.is_err() || parts.certificates.iter().any(|c| c.days_left < 7);
    Ok(Json(HealthReport {
        status: if failing { "degraded" } else { "ok" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        node: state.services.hostname.clone(),
        directory,
        domains,
        sessions: sessions.ok().map(|s| s.len()),
        parts,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
struct ActivityReport {
    /// The node these counts are from (each node counts its own).
    node: String,
    /// The first minute's start, in seconds since the epoch; each value covers a minute.
    start: u64,
    /// Per minute, oldest first: `sessions`, `logins`, `failed_logins`, `deliveries`,
    /// `quota_refusals`.
    series: std::collections::BTreeMap<String, Vec<u64>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ActivityQuery {
    /// How many minutes, up to now (default 180, at most 360).
    #[param(minimum = 1, maximum = 360)]
    minutes: Option<usize>,
}

/// What this node did minute by minute over the last hours, from its own counters (kept in
/// memory six hours; Prometheus's metrics say the same over longer times).
#[utoipa::path(get, path = "/api/v1/activity", tag = "service", params(ActivityQuery),
    responses((status = 200, body = ActivityReport), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn activity(
    State(state): State<AdminState>,
    caller: Caller,
    Query(q): Query<ActivityQuery>,
) -> Result<Json<ActivityReport>, Problem> {
    caller.read_all()?;
    let minutes = q.minutes.unwrap_or(180);
    if !(1..=pillarbox_core::activity::KEPT_MINUTES).contains(&minutes) {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "minutes is 1 to 360"));
    }
    let w = state.services.metrics.activity.window(minutes, state.now());
    Ok(Json(ActivityReport {
        node: state.services.hostname.clone(),
        start: w.start,
        series: w.series.into_iter().map(|(e, v)| (e.name().to_owned(), v)).collect(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
struct Me {
    /// `token:NAME`, or `oauth2:USER` for an identity provider's token.
    actor: String,
    /// `admin`, `read`, `domain:NAME`.
    scopes: Vec<String>,
}

/// Who the token is, and what it may do.
#[utoipa::path(get, path = "/api/v1/me", tag = "service",
    responses((status = 200, body = Me), (status = 401, body = Problem)))]
async fn me(caller: Caller) -> Json<Me> {
    Json(Me { actor: caller.actor, scopes: caller.scopes.iter().map(ToString::to_string).collect() })
}

#[derive(Debug, Serialize, ToSchema)]
struct AuditRecord {
    id: u64,
    /// Seconds since the epoch.
    at: u64,
    /// `token:NAME`.
    actor: String,
    action: String,
    target: String,
    client: String,
    /// `ok`, `forbidden`, or the error's status and title.
    outcome: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Only entries older than this id (the next page).
    before: Option<u64>,
    /// Most entries (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// The audit log, newest first: every change made through this API.
#[utoipa::path(get, path = "/api/v1/audit", tag = "service", params(AuditQuery),
    responses((status = 200, body = Vec<AuditRecord>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_audit(
    State(state): State<AdminState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditRecord>>, Problem> {
    caller.read_all()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "limit is 1 to 1000"));
    }
    if q.before.is_some_and(|b| i64::try_from(b).is_err()) {
        return Err(Problem::new(StatusCode::BAD_REQUEST, format!("before is at most {}", i64::MAX)));
    }
    let entries = state.services.access.audit(q.before, limit).await.map_err(unavailable)?;
    Ok(Json(
        entries
            .into_iter()
            .map(|e| AuditRecord {
                id: e.id,
                at: e.at,
                actor: e.actor,
                action: e.action,
                target: e.target,
                client: e.client,
                outcome: e.outcome,
            })
            .collect(),
    ))
}

// ---------------------------------------------------------------------------------------------
// The console's sign-in through the identity provider

#[derive(Debug, Serialize, ToSchema)]
struct SignIn {
    issuer: String,
    /// Where the browser goes to sign in (the code flow with PKCE, S256).
    authorization_endpoint: String,
    client_id: String,
    scope: String,
}

fn no_sign_in() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "the console signs in with tokens only ([admin] oauth2_client_id is not set)")
}

#[derive(Debug, Serialize, ToSchema)]
struct SignInOptions {
    /// The identity provider to sign in at; absent: tokens only.
    provider: Option<SignIn>,
}

/// How the console may sign in: with tokens, and through the identity provider when
/// `[admin] oauth2_client_id` is set (no token needed to ask).
#[utoipa::path(get, path = "/api/v1/console/sign-in", tag = "console", security(()),
    responses((status = 200, body = SignInOptions)))]
async fn console_sign_in(State(state): State<AdminState>, _limited: Limited) -> Result<Json<SignInOptions>, Problem> {
    let (Some((client_id, scope)), Some(provider)) = (&state.console_client, state.services.bearer()) else {
        return Ok(Json(SignInOptions { provider: None }));
    };
    let endpoint = provider.sign_in_endpoint().await.map_err(provider_problem)?;
    Ok(Json(SignInOptions {
        provider: Some(SignIn {
            issuer: endpoint.issuer,
            authorization_endpoint: endpoint.authorization_endpoint,
            client_id: client_id.to_string(),
            scope: scope.to_string(),
        }),
    }))
}

fn provider_problem(e: pillarbox_core::BearerRefusal) -> Problem {
    match e {
        pillarbox_core::BearerRefusal::Unavailable(why) => {
            tracing::warn!(error = why, "console sign-in: the identity provider cannot be asked");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the identity provider cannot be reached now; try again later",
            )
        }
        pillarbox_core::BearerRefusal::Invalid(why) => Problem::new(StatusCode::UNAUTHORIZED, why),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    /// The authorization code the identity provider sent the browser back with.
    code: String,
    /// The PKCE verifier the browser made (RFC 7636: 43 to 128 characters).
    code_verifier: String,
    /// The console's own address, as sent to the authorization endpoint.
    redirect_uri: String,
}

impl std::fmt::Debug for CodeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeBody").field("redirect_uri", &self.redirect_uri).finish_non_exhaustive()
    }
}

#[derive(Serialize, ToSchema)]
struct SignedIn {
    /// The identity provider's access token: the console's bearer token from now on.
    access_token: String,
}

/// Redeem the code the browser brought back from the identity provider for an access token
/// (the console's client is public: the PKCE verifier is the proof). The token is then used as
/// any other: it must carry the admin claim.
#[utoipa::path(post, path = "/api/v1/console/token", tag = "console", security(()), request_body = CodeBody,
    responses((status = 200, body = SignedIn), (status = 401, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
async fn console_token(
    State(state): State<AdminState>,
    limited: Limited,
    headers: axum::http::HeaderMap,
    Json(body): Json<CodeBody>,
) -> Result<Json<SignedIn>, Problem> {
    let (Some((client_id, _)), Some(provider)) = (&state.console_client, state.services.bearer()) else {
        return Err(no_sign_in());
    };
    let verifier_ok = (43..=128).contains(&body.code_verifier.len())
        && body.code_verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if !verifier_ok {
        return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "code_verifier is not an RFC 7636 verifier"));
    }
    if body.code.is_empty() || body.code.len() > 4096 {
        return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "code is empty or too long"));
    }
    // The code is redeemed only for this console's own address: a code made for another
    // redirect cannot be brought here.
    let host = headers.get(axum::http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ours = ["https", "http"].iter().any(|scheme| body.redirect_uri == format!("{scheme}://{host}/"));
    if host.is_empty() || !ours {
        return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "redirect_uri must be this console's address"));
    }
    let redemption = pillarbox_core::CodeRedemption {
        client_id,
        code: &Secret::new(body.code),
        verifier: &Secret::new(body.code_verifier),
        redirect_uri: &body.redirect_uri,
    };
    match provider.redeem_code(redemption).await {
        Ok(token) => {
            tracing::info!(client = %limited.ip, "console: signed in through the identity provider");
            Ok(Json(SignedIn { access_token: token.expose().clone() }))
        }
        Err(e) => {
            if matches!(e, pillarbox_core::BearerRefusal::Invalid(_)) {
                limited.failed(&state);
                tracing::info!(client = %limited.ip, "console: a sign-in through the identity provider was refused");
            }
            Err(provider_problem(e))
        }
    }
}
