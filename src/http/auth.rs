//! Who may do what, applied to HTTP requests: the bearer token of a request checked against
//! the token table of [`crate::access`], and the scope each endpoint requires.

use axum::http::{HeaderMap, Method};

pub use crate::access::{new_secret, sha256_hex, Denied, Principal, Scope, TokenConfig, Tokens};

impl Tokens {
    /// Who the `Authorization` header says the caller is, if it may use `scope`.
    pub fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<Principal, Denied> {
        self.check(bearer(headers), scope)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// The scope an endpoint requires, or `None` for the operational endpoints that stay open.
/// Unknown paths require `read`, so they answer 401 without a token (routes are not probed).
pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    match path {
        "/healthz" | "/readyz" | "/metrics" | "/openapi.json" => return None,
        _ => {}
    }
    let write = *method == Method::POST || *method == Method::PUT || *method == Method::DELETE;
    if !write {
        return Some(Scope::Read);
    }
    if path == "/event" || path == "/api/v1/events" {
        Some(Scope::EventsWrite)
    } else if path.starts_with("/api/v1/users/") && path.ends_with("/risk") {
        Some(Scope::ProfilesWrite)
    } else if path == "/api/v1/rules" || path.starts_with("/api/v1/rules/") {
        Some(Scope::RulesWrite)
    } else {
        // A write to a path that has no write route: the router answers 404/405 after this.
        Some(Scope::Read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    fn tokens() -> Tokens {
        Tokens::new(
            &[TokenConfig {
                name: "ops".into(),
                sha256: sha256_hex("s3cret"),
                scopes: vec![Scope::Read, Scope::ProfilesWrite],
            }],
            Some(&format!(
                "[[tokens]]\nname = \"ingest\"\nsha256 = \"{}\"\nscopes = [\"events:write\"]\n",
                sha256_hex("other")
            )),
        )
        .unwrap()
    }

    #[test]
    fn a_token_is_known_by_its_hash_and_limited_to_its_scopes() {
        let t = tokens();
        assert_eq!(
            t.authorize(&headers("s3cret"), Scope::Read).unwrap().name,
            "ops"
        );
        assert_eq!(
            t.authorize(&headers("other"), Scope::EventsWrite)
                .unwrap()
                .name,
            "ingest"
        );
        assert_eq!(
            t.authorize(&headers("other"), Scope::Read),
            Err(Denied::Scope {
                name: "ingest".into(),
                scope: Scope::Read
            })
        );
        assert_eq!(
            t.authorize(&headers("wrong"), Scope::Read),
            Err(Denied::Invalid)
        );
        assert_eq!(
            t.authorize(&HeaderMap::new(), Scope::Read),
            Err(Denied::Missing)
        );
    }

    #[test]
    fn bad_token_entries_are_all_named() {
        let err = Tokens::new(
            &[
                TokenConfig {
                    name: "".into(),
                    sha256: "abc".into(),
                    scopes: vec![],
                },
                TokenConfig {
                    name: "x".into(),
                    sha256: sha256_hex("a"),
                    scopes: vec![Scope::Read],
                },
                TokenConfig {
                    name: "x".into(),
                    sha256: sha256_hex("b"),
                    scopes: vec![Scope::Read],
                },
            ],
            None,
        )
        .unwrap_err();
        assert!(err.contains("token[0]: name must not be empty"), "{err}");
        assert!(err.contains("token[0] (): sha256 must be 64 hex"), "{err}");
        assert!(
            err.contains("token[0] (): scopes must not be empty"),
            "{err}"
        );
        assert!(err.contains("token[2] (x): name is used twice"), "{err}");
        assert!("admin"
            .parse::<Scope>()
            .unwrap_err()
            .contains("unknown scope"));
    }

    #[test]
    fn operational_endpoints_stay_open_and_writes_need_their_scope() {
        assert_eq!(required_scope(&Method::GET, "/healthz"), None);
        assert_eq!(required_scope(&Method::GET, "/openapi.json"), None);
        assert_eq!(
            required_scope(&Method::POST, "/event"),
            Some(Scope::EventsWrite)
        );
        assert_eq!(
            required_scope(&Method::PUT, "/api/v1/users/3/risk"),
            Some(Scope::ProfilesWrite)
        );
        assert_eq!(
            required_scope(&Method::GET, "/api/v1/audit"),
            Some(Scope::Read)
        );
        assert_eq!(
            required_scope(&Method::PUT, "/api/v1/rules"),
            Some(Scope::RulesWrite)
        );
        assert!(new_secret().starts_with("umt_"));
        assert_ne!(new_secret(), new_secret());
    }
}
