//! Who may do what, applied to HTTP requests: the bearer token of a request checked against
//! the token table of [`crate::access`] (each route group declares its scope in
//! [`super::routes`]).

use axum::http::HeaderMap;

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
    fn new_secrets_are_prefixed_and_unique() {
        assert!(new_secret().starts_with("umt_"));
        assert_ne!(new_secret(), new_secret());
    }
}
