//! The daemon's own web page at `/`: memory, models, the pressure level
//! and the last hour's charts, kept live from `/locara/v1/events` and
//! `/locara/v1/history`.
//!
//! The page, its script and its style are compiled into the binary
//! (`include_str!`): nothing is fetched from elsewhere, and the
//! Content-Security-Policy ([`CSP`]) lets the page load only its own
//! script and style and talk only to its own origin (no inline script, no
//! frames, no forms elsewhere).
//!
//! **Login without a token in the page.** `locara open` asks the daemon
//! (admin token) for a one-time code (`POST /locara/v1/login`) and prints
//! `/login?code=...`. Visiting it consumes the code (once, within
//! [`LOGIN_CODE_TTL`]), sets an `HttpOnly; SameSite=Strict` session cookie
//! and redirects to `/`: the page's script never sees a token, and
//! another site's page can neither read the cookie nor have it sent along
//! (SameSite), nor call the API (the `Origin` check lets in only the
//! daemon's own origin and the configured ones). Sessions live in the
//! daemon's memory and end with it or after [`SESSION_TTL`].

use crate::apps::{AppError, Token};
use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The page's policy: its own script, style and API only; the charts are
/// SVG drawn by the script.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "locara_session";

/// How long a login code may wait for its first use: long enough to paste
/// it into a browser, short enough that one found in a terminal's
/// scrollback later is dead.
pub const LOGIN_CODE_TTL: Duration = Duration::from_secs(120);

/// How long a browser's session lasts (a working day).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Codes waiting for their use, and sessions, at most: older ones go
/// first, so a loop asking for codes cannot grow the daemon's memory.
const MAX_CODES: usize = 16;
const MAX_SESSIONS: usize = 64;

const CODE_PREFIX: &str = "lcl_";
const SESSION_PREFIX: &str = "lcs_";

const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const APP_CSS: &str = include_str!("web/app.css");

/// Login codes waiting for their use and the sessions they opened, each
/// with when it expires. Times are passed in, so tests need no clock.
#[derive(Default)]
pub struct WebLogins {
    codes: Mutex<Vec<(Token, Instant)>>,
    sessions: Mutex<Vec<(Token, Instant)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps `token` until `expires`, dropping expired entries and, past
/// `max`, the oldest.
fn keep(
    list: &mut Vec<(Token, Instant)>,
    token: Token,
    expires: Instant,
    now: Instant,
    max: usize,
) {
    list.retain(|(_, e)| *e > now);
    if list.len() >= max {
        list.remove(0);
    }
    list.push((token, expires));
}

impl WebLogins {
    /// A new one-time login code, valid for [`LOGIN_CODE_TTL`] after `now`.
    pub fn issue_code(&self, now: Instant) -> Result<Token, AppError> {
        let code = Token::generate(CODE_PREFIX)?;
        keep(
            &mut lock(&self.codes),
            code.clone(),
            now + LOGIN_CODE_TTL,
            now,
            MAX_CODES,
        );
        Ok(code)
    }

    /// Consumes `code` (valid, unused, unexpired at `now`) and opens a
    /// session; `None` for any other code.
    pub fn redeem(&self, code: &str, now: Instant) -> Result<Option<Token>, AppError> {
        {
            let mut codes = lock(&self.codes);
            codes.retain(|(_, e)| *e > now);
            // Every entry is compared (in constant time each), so the time
            // taken says nothing of which one matched.
            let found =
                codes.iter().enumerate().fold(
                    None,
                    |f, (i, (c, _))| if c.matches(code) { Some(i) } else { f },
                );
            match found {
                Some(i) => {
                    codes.remove(i);
                }
                None => return Ok(None),
            }
        }
        let session = Token::generate(SESSION_PREFIX)?;
        keep(
            &mut lock(&self.sessions),
            session.clone(),
            now + SESSION_TTL,
            now,
            MAX_SESSIONS,
        );
        Ok(Some(session))
    }

    /// Whether `session` is an open session at `now`.
    pub fn session_valid(&self, session: &str, now: Instant) -> bool {
        lock(&self.sessions)
            .iter()
            .fold(false, |ok, (s, e)| (s.matches(session) && *e > now) || ok)
    }
}

/// The session cookie's value in a request's `Cookie` headers.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v)
}

/// An embedded file with the page's security headers.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response();
    r.headers_mut().insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    r
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

#[derive(Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    code: String,
}

/// `GET /login?code=...`: a valid code becomes a session cookie and a
/// redirect to `/`; any other is refused, saying how to get a new one.
pub async fn login(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<crate::server::AppState>>,
    Query(q): Query<LoginQuery>,
) -> Response {
    match state.web.redeem(&q.code, Instant::now()) {
        Ok(Some(session)) => {
            let cookie = format!(
                "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                session.as_str(),
                SESSION_TTL.as_secs()
            );
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/".to_string()),
                    (header::SET_COOKIE, cookie),
                    (header::REFERRER_POLICY, "no-referrer".to_string()),
                    (header::CACHE_CONTROL, "no-store".to_string()),
                ],
            )
                .into_response()
        }
        Ok(None) => (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "This login link was used already or has expired (links work once, for 2 minutes). Run `locara open` for a new one.\n",
        )
            .into_response(),
        Err(e) => crate::openai::ApiError::from(e).into_response(),
    }
}

/// `POST /locara/v1/login` (admin): a one-time login code for the page.
pub async fn new_login(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<crate::server::AppState>>,
) -> Result<axum::Json<serde_json::Value>, crate::openai::ApiError> {
    let code = state.web.issue_code(Instant::now())?;
    Ok(axum::Json(serde_json::json!({
        "path": format!("/login?code={}", code.as_str()),
        "expires_in_s": LOGIN_CODE_TTL.as_secs(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_opens_one_session_once_and_only_before_it_expires() {
        let logins = WebLogins::default();
        let t0 = Instant::now();
        let code = logins.issue_code(t0).unwrap();
        assert!(code.as_str().starts_with(CODE_PREFIX));
        let session = logins
            .redeem(code.as_str(), t0 + Duration::from_secs(1))
            .unwrap()
            .expect("a fresh code opens a session");
        assert!(logins.session_valid(session.as_str(), t0 + Duration::from_secs(2)));
        assert!(!logins.session_valid(session.as_str(), t0 + SESSION_TTL + Duration::from_secs(1)));
        assert!(!logins.session_valid("lcs_0000", t0));
        // Used once: gone.
        assert!(logins
            .redeem(code.as_str(), t0 + Duration::from_secs(2))
            .unwrap()
            .is_none());
        // Expired before its use.
        let late = logins.issue_code(t0).unwrap();
        assert!(logins
            .redeem(late.as_str(), t0 + LOGIN_CODE_TTL)
            .unwrap()
            .is_none());
        // A code is not a session, nor a session a code.
        let code = logins.issue_code(t0).unwrap();
        assert!(!logins.session_valid(code.as_str(), t0));
        assert!(logins.redeem(session.as_str(), t0).unwrap().is_none());
    }

    #[test]
    fn outstanding_codes_are_bounded_oldest_first() {
        let logins = WebLogins::default();
        let t0 = Instant::now();
        let first = logins.issue_code(t0).unwrap();
        for _ in 0..MAX_CODES {
            logins.issue_code(t0).unwrap();
        }
        assert_eq!(lock(&logins.codes).len(), MAX_CODES);
        assert!(logins.redeem(first.as_str(), t0).unwrap().is_none());
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; locara_session=lcs_x"),
        );
        assert_eq!(session_cookie(&h), Some("lcs_x"));
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("xlocara_session=1"),
        );
        assert_eq!(session_cookie(&h), None);
    }
}
