//! The page's actions: signing in and out, and draining, enabling or
//! disabling a backend. Every one is a POST form that works without
//! script; a change needs a session ([`super::session`]), its CSRF token
//! and a same-origin request, asks for confirmation on a page of its own,
//! and goes through the same write as `tandemctl backend drain/enable/
//! disable` ([`crate::service::update_backend`]: the declared
//! configuration, or the emergency lever while the database is down).

use std::time::Instant;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tandem_core::AdminState;

use super::html::{self, Outcome, Viewer};
use super::session::{self, Session};
use super::{Ui, backend_key, page_response};
use crate::consensus::aggregator::now_ms;
use crate::service::{BackendPatch, BackendWrite, update_backend};

/// What the page can do to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Drain,
    Enable,
    Disable,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Drain, Action::Disable, Action::Enable];

    /// From the last segment of its path.
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "drain" => Some(Action::Drain),
            "enable" => Some(Action::Enable),
            "disable" => Some(Action::Disable),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Drain => "drain",
            Action::Enable => "enable",
            Action::Disable => "disable",
        }
    }

    pub fn verb(self) -> &'static str {
        match self {
            Action::Drain => "Drain",
            Action::Enable => "Enable",
            Action::Disable => "Disable",
        }
    }

    /// The admin state it declares.
    pub fn state(self) -> AdminState {
        match self {
            Action::Drain => AdminState::Draining,
            Action::Enable => AdminState::Enabled,
            Action::Disable => AdminState::Disabled,
        }
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct ActionForm {
    csrf: Option<String>,
    confirm: Option<String>,
}

#[derive(serde::Deserialize)]
pub struct SignInForm {
    token: Option<String>,
}

impl std::fmt::Debug for SignInForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignInForm(<redacted>)")
    }
}

/// The signed-in session a request's cookie names, with its id.
pub fn signed_in(ui: &Ui, headers: &HeaderMap) -> Option<(String, Session)> {
    let id = session::cookie(headers)?;
    let s = ui.access.sessions.get(&id, Instant::now())?;
    Some((id, s))
}

pub fn viewer_of(session: Option<&Session>) -> Viewer {
    match session {
        Some(s) => Viewer::Admin {
            user: s.user.clone(),
            csrf: s.csrf.clone(),
        },
        None => Viewer::ReadOnly,
    }
}

fn refuse(ui: &Ui, viewer: &Viewer, status: StatusCode, title: &str, text: &str) -> Response {
    let page = html::message(ui.live.replica(), now_ms(), viewer, title, text);
    page_response(status, page, viewer.has_forms())
}

fn see_other(to: &str, cookie: Option<String>) -> Response {
    let mut res = (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response();
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        res.headers_mut().insert(header::SET_COOKIE, c);
    }
    res
}

/// The checks every change makes, in order: same origin, a session, its
/// CSRF token. The session, or the page that refuses.
fn authorize(
    ui: &Ui,
    headers: &HeaderMap,
    csrf: Option<&str>,
    what: &str,
) -> Result<Session, Box<Response>> {
    let session = signed_in(ui, headers).map(|(_, s)| s);
    let viewer = viewer_of(session.as_ref());
    if let Err(why) = session::same_origin(headers) {
        tracing::warn!(%why, "status page: refused a cross-origin {what}");
        return Err(Box::new(refuse(
            ui,
            &viewer,
            StatusCode::FORBIDDEN,
            "Refused",
            &format!("Refused to {what}: {why}. Use the page itself."),
        )));
    }
    let Some(session) = session else {
        return Err(Box::new(refuse(
            ui,
            &viewer,
            StatusCode::UNAUTHORIZED,
            "Sign in first",
            &format!(
                "Refused to {what}: this browser is not signed in (or its session ended after 30 minutes without a request, or this replica restarted). Sign in with an admin credential, then try again."
            ),
        )));
    };
    if !csrf.is_some_and(|c| session::same_token(c, &session.csrf)) {
        tracing::warn!(user = %session.user, "status page: refused a {what} without its CSRF token");
        return Err(Box::new(refuse(
            ui,
            &viewer,
            StatusCode::FORBIDDEN,
            "Refused",
            &format!(
                "Refused to {what}: the form did not carry this session's CSRF token. Reload the page and use its buttons."
            ),
        )));
    }
    Ok(session)
}

/// `GET /ui/signin`
pub async fn sign_in_page(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let session = signed_in(&ui, &headers).map(|(_, s)| s);
    let viewer = viewer_of(session.as_ref());
    let page = html::sign_in(ui.live.replica(), now_ms(), &viewer, None);
    page_response(StatusCode::OK, page, true)
}

/// `POST /ui/signin`: a session for an admin credential.
pub async fn sign_in(
    State(ui): State<Ui>,
    headers: HeaderMap,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Response {
    let replica = ui.live.replica();
    let again = |status: StatusCode, error: &str| {
        let page = html::sign_in(replica, now_ms(), &Viewer::ReadOnly, Some(error));
        page_response(status, page, true)
    };
    if let Err(why) = session::same_origin(&headers) {
        tracing::warn!(%why, "status page: refused a cross-origin sign-in");
        return again(
            StatusCode::FORBIDDEN,
            &format!("Refused: {why}. Sign in on this page."),
        );
    }
    let started = Instant::now();
    if let Err(wait) = ui.access.sessions.try_sign_in(started) {
        let secs = wait.as_secs().max(1);
        let mut res = again(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too many failed sign-ins on this replica; try again in {secs}s."),
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return res;
    }
    let token = match &form {
        Ok(Form(f)) => f.token.as_deref().unwrap_or(""),
        Err(_) => "",
    };
    let user = if token.len() > 4096 {
        None
    } else {
        session::admin_from_token(&ui.access.credentials, token)
    };
    let Some(user) = user else {
        tracing::warn!("status page: a failed sign-in");
        tokio::time::sleep(session::FAILURE_DELAY).await;
        let error = if token.trim().is_empty() {
            "Give the admin token."
        } else {
            "That is not an admin credential."
        };
        return again(StatusCode::UNAUTHORIZED, error);
    };
    ui.access.sessions.succeeded(started);
    if let Some(old) = session::cookie(&headers) {
        ui.access.sessions.close(&old);
    }
    let (id, _) = ui.access.sessions.open(user.clone(), Instant::now());
    tracing::info!(%user, "status page: signed in");
    see_other(
        "/ui/",
        Some(session::set_cookie(&id, session::over_tls(&headers))),
    )
}

/// `POST /ui/signout`
pub async fn sign_out(
    State(ui): State<Ui>,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let clear = Some(session::clear_cookie(session::over_tls(&headers)));
    let Some((id, _)) = signed_in(&ui, &headers) else {
        return see_other("/ui/", clear);
    };
    let csrf = form.as_ref().ok().and_then(|f| f.csrf.as_deref());
    let session = match authorize(&ui, &headers, csrf, "sign out") {
        Ok(s) => s,
        Err(refused) => return *refused,
    };
    ui.access.sessions.close(&id);
    tracing::info!(user = %session.user, "status page: signed out");
    see_other("/ui/", clear)
}

/// `POST /ui/pools/{pool}/backends/{address}/{action}`: without
/// `confirm=yes`, the page that asks; with it, the change.
pub async fn act(
    State(ui): State<Ui>,
    Path((pool, address, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(f)) => f,
        Err(e) => {
            let viewer = viewer_of(signed_in(&ui, &headers).map(|(_, s)| s).as_ref());
            return refuse(
                &ui,
                &viewer,
                StatusCode::BAD_REQUEST,
                "Bad request",
                &format!("The form could not be read: {e}"),
            );
        }
    };
    let what = match Action::parse(&action) {
        Some(a) => format!("{} a backend", a.name()),
        None => "change a backend".to_string(),
    };
    let session = match authorize(&ui, &headers, form.csrf.as_deref(), &what) {
        Ok(s) => s,
        Err(refused) => return *refused,
    };
    let viewer = viewer_of(Some(&session));
    let Some(action) = Action::parse(&action) else {
        return refuse(
            &ui,
            &viewer,
            StatusCode::NOT_FOUND,
            "No such action",
            &format!(
                "There is no action {action:?}: a backend can be drained (drain), enabled (enable) or disabled (disable)."
            ),
        );
    };
    let Some(key) = backend_key(&pool, &address) else {
        return refuse(
            &ui,
            &viewer,
            StatusCode::NOT_FOUND,
            "No such backend",
            &format!(
                "There is no backend {address:?} in pool {pool:?}: not a pool name and a host:port."
            ),
        );
    };
    let (pool, address) = (key.pool.as_str(), key.address.as_str());
    let replica = ui.live.replica();
    if form.confirm.as_deref() != Some("yes") {
        let overview = ui.live.overview().await;
        let current = super::view::backend_state(&overview, pool, address)
            .backend
            .map(|b| b.admin);
        let page = html::confirm(&html::Confirm {
            replica,
            now_ms: now_ms(),
            viewer: &viewer,
            pool,
            address,
            action,
            current,
        });
        return page_response(StatusCode::OK, page, true);
    }
    let actor = format!("ui:{}", session.user);
    let src = ui.live.sources();
    let patch = BackendPatch {
        admin_state: Some(action.state()),
        ..Default::default()
    };
    // Recorded in change_log as the change's actor, as the API's callers are.
    let recorded = format!("{} (status page)", session.user);
    let written = update_backend(
        &src.store,
        &src.consensus,
        &key.pool,
        &key.address,
        None,
        patch,
    );
    let outcome = match crate::store::as_actor(recorded, written).await {
        Ok(BackendWrite::Declared(_, revision)) => {
            tracing::info!(
                %actor, pool, backend = address, action = action.name(), revision = revision.0,
                "status page: backend admin state changed"
            );
            Outcome::Revision(revision.0)
        }
        Ok(BackendWrite::Override { raft_index }) => {
            tracing::info!(
                %actor, pool, backend = address, action = action.name(), raft_index,
                "status page: backend admin state committed as a raft override"
            );
            Outcome::Override
        }
        Ok(BackendWrite::NotLeader { leader, cause }) => {
            tracing::warn!(%actor, pool, backend = address, action = action.name(), leader, error = %cause, "status page: action needs the raft leader");
            return refuse(
                &ui,
                &viewer,
                StatusCode::SERVICE_UNAVAILABLE,
                "Not done",
                &format!(
                    "Could not {} {address} in pool {pool}: the control database is down ({cause}), and only the raft leader (replica {leader}) can commit the change as an override: open its status page",
                    action.name(),
                ),
            );
        }
        Err(e) => {
            tracing::warn!(%actor, pool, backend = address, action = action.name(), error = %e, "status page: action failed");
            let status: tonic::Status = e.into();
            let code = match status.code() {
                tonic::Code::NotFound => StatusCode::NOT_FOUND,
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                tonic::Code::FailedPrecondition
                | tonic::Code::Aborted
                | tonic::Code::AlreadyExists => StatusCode::CONFLICT,
                tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return refuse(
                &ui,
                &viewer,
                code,
                "Not done",
                &format!(
                    "Could not {} {address} in pool {pool}: {}",
                    action.name(),
                    status.message()
                ),
            );
        }
    };
    let page = html::done(replica, now_ms(), &viewer, pool, address, action, outcome);
    page_response(StatusCode::OK, page, true)
}
