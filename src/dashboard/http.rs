//! Who may see the dashboard, and its two pages: `/` (the self-contained
//! page in `page.html`) and `/api/status` (the board as JSON). They share
//! the sink's one HTTP listener with `/metrics` and `/healthz`
//! ([`crate::metrics::Metrics::serve`]), which stay open.
//!
//! The board shows revenue and order counts, so it gets the care of the
//! sockets:
//! - with `--http-token FILE`, `/api/status` needs `Authorization: Bearer
//!   TOKEN` (compared in constant time); the page asks for the token once
//!   and keeps it in the tab's session storage;
//! - without a token, on a loopback address, it is open to this host, and a
//!   request whose `Host` is not a loopback name is refused (a web page
//!   elsewhere cannot read it through DNS rebinding);
//! - without a token off loopback, it is refused (403, said once in the log)
//!   unless `--insecure`.
//!
//! The page itself holds no figures: it draws what `/api/status` returns.

use super::Board;
use crate::metrics::{HttpResponse, Pages};
use crate::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// The page, compiled in: no CDN, no build step.
const PAGE: &str = include_str!("page.html");
/// Tokens shorter than this are refused at start-up.
const TOKEN_MIN_LEN: usize = 16;

/// Who may read `/api/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    /// Requests carrying this bearer token.
    Token(Vec<u8>),
    /// Anyone who can reach the address (`--insecure`).
    Open,
    /// Requests addressed to a loopback name (the listener is on loopback).
    Loopback,
    /// Nobody: the listener is off loopback with neither token nor
    /// `--insecure`; the reason is what a refused request is told.
    Refused(String),
}

/// The dashboard's pages, served from the metrics listener.
pub struct Dashboard {
    board: Arc<Board>,
    access: Access,
}

impl Dashboard {
    /// The dashboard of `board` on the listener at `addr`, with the bearer
    /// `token` if one was given. Says in one line if it will refuse.
    pub fn new(board: Arc<Board>, addr: &str, token: Option<Vec<u8>>, insecure: bool) -> Self {
        let access = access_for(addr, token, insecure);
        if let Access::Refused(why) = &access {
            tracing::warn!("{why}");
        }
        Dashboard { board, access }
    }

    fn status(&self, request: &tiny_http::Request) -> HttpResponse {
        if let Err((code, why)) = self.allowed(request) {
            return text(code, &why);
        }
        match serde_json::to_vec(&self.board.snapshot()) {
            Ok(body) => respond(200, body, "application/json"),
            Err(e) => text(500, &format!("the status did not encode: {e}")),
        }
    }

    /// Whether `request` may read the status; if not, the code and why.
    fn allowed(&self, request: &tiny_http::Request) -> std::result::Result<(), (u16, String)> {
        match &self.access {
            Access::Open => Ok(()),
            Access::Refused(why) => Err((403, why.clone())),
            Access::Loopback => {
                let host = header(request, "Host").unwrap_or("");
                if is_loopback_host(host) {
                    Ok(())
                } else {
                    Err((403, format!("Host {host:?} is not a loopback name; this dashboard only answers http://localhost or http://127.0.0.1")))
                }
            }
            Access::Token(token) => {
                let given = header(request, "Authorization")
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
                    .unwrap_or("");
                if equal_in_constant_time(given.as_bytes(), token) {
                    Ok(())
                } else {
                    Err((401, "this dashboard needs its token (--http-token)".into()))
                }
            }
        }
    }
}

impl Pages for Dashboard {
    fn answer(&self, request: &tiny_http::Request) -> Option<HttpResponse> {
        let path = request.url().split('?').next().unwrap_or("");
        match path {
            "/" | "/index.html" => Some(if let Access::Refused(why) = &self.access {
                text(403, why)
            } else {
                let mut page = respond(200, PAGE.as_bytes().to_vec(), "text/html; charset=utf-8");
                page.add_header(header_line("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'"));
                page
            }),
            "/api/status" => Some(self.status(request)),
            _ => None,
        }
    }

    fn paths(&self) -> &'static str {
        "/, /api/status, "
    }
}

/// The access policy for a listener at `addr`.
fn access_for(addr: &str, token: Option<Vec<u8>>, insecure: bool) -> Access {
    match token {
        Some(token) => Access::Token(token),
        None if insecure => Access::Open,
        None if is_loopback_addr(addr) => Access::Loopback,
        None => Access::Refused(format!(
            "not serving the dashboard on {addr}: off loopback it shows revenue and order figures; \
             give --http-token FILE or --insecure (/metrics and /healthz are served)"
        )),
    }
}

/// Reads the bearer token from `path` (surrounding white space dropped).
pub fn read_token(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "--http-token {}: cannot read it: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.len() < TOKEN_MIN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::Config(format!(
            "--http-token {}: the token must be one word of at least {TOKEN_MIN_LEN} characters \
             (e.g. `openssl rand -hex 16 > {}`)",
            path.display(),
            path.display()
        )));
    }
    Ok(token.as_bytes().to_vec())
}

/// True for `127.x.x.x:PORT`, `localhost:PORT` and `[::1]:PORT`.
fn is_loopback_addr(addr: &str) -> bool {
    let host = match addr.rsplit_once(':') {
        Some((host, _port)) => host,
        None => addr,
    };
    is_loopback_name(host)
}

/// True when a `Host` header names this machine's loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.split(':').next().unwrap_or(host)
    };
    is_loopback_name(name)
}

fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name == "::1"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guess was right.
fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header<'r>(request: &'r tiny_http::Request, name: &str) -> Option<&'r str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn header_line(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}

fn respond(code: u16, body: Vec<u8>, content_type: &str) -> HttpResponse {
    tiny_http::Response::from_data(body)
        .with_status_code(code)
        .with_header(header_line("Content-Type", content_type))
        .with_header(header_line("Cache-Control", "no-store"))
        .with_header(header_line("X-Content-Type-Options", "nosniff"))
}

fn text(code: u16, message: &str) -> HttpResponse {
    respond(
        code,
        format!("{message}\n").into_bytes(),
        "text/plain; charset=utf-8",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_follows_token_insecure_and_loopback() {
        let token = Some(b"0123456789abcdef".to_vec());
        assert_eq!(
            access_for("0.0.0.0:9101", token.clone(), false),
            Access::Token(token.clone().unwrap())
        );
        assert_eq!(access_for("0.0.0.0:9101", None, true), Access::Open);
        assert_eq!(access_for("127.0.0.1:9101", None, false), Access::Loopback);
        assert_eq!(access_for("localhost:0", None, false), Access::Loopback);
        assert_eq!(access_for("[::1]:9101", None, false), Access::Loopback);
        for off in ["0.0.0.0:9101", "10.0.0.5:9101", "[::]:9101", "myhost:9101"] {
            assert!(
                matches!(access_for(off, None, false), Access::Refused(ref why) if why.contains("--http-token")),
                "{off}"
            );
        }
    }

    #[test]
    fn only_loopback_host_headers_pass_on_loopback() {
        for ok in [
            "localhost",
            "localhost:9101",
            "127.0.0.1:80",
            "[::1]:9101",
            "127.1.2.3",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example:9101",
            "10.0.0.1",
            "localhost.evil.example",
            "[::2]:1",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(equal_in_constant_time(b"abc", b"abc"));
        assert!(!equal_in_constant_time(b"abc", b"abd"));
        assert!(!equal_in_constant_time(b"abc", b"abcd"));
        assert!(!equal_in_constant_time(b"", b"a"));
    }

    #[test]
    fn short_or_spaced_tokens_are_refused_with_the_file_named() {
        let dir = std::env::temp_dir().join(format!("og-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "short\n").unwrap();
        let err = read_token(&file).unwrap_err().to_string();
        assert!(
            err.contains("token") && err.contains("at least 16"),
            "{err}"
        );
        std::fs::write(&file, "0123456789 abcdef\n").unwrap();
        assert!(read_token(&file).is_err());
        std::fs::write(&file, "  0123456789abcdef\n").unwrap();
        assert_eq!(read_token(&file).unwrap(), b"0123456789abcdef");
        let missing = read_token(&dir.join("missing")).unwrap_err().to_string();
        assert!(
            missing.contains("missing") && missing.contains("cannot read"),
            "{missing}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
