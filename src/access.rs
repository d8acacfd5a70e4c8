//! Who may do what (CONTRACT §7), as data: the scopes, the configured tokens (a name, the SHA-256 of
//! the secret, scopes) and the validated token table that checks a presented secret. No HTTP
//! here: [`crate::config`] validates the table at load, [`crate::http::auth`] applies it to
//! requests, the CLI creates tokens.
//!
//! Secrets never reach the configuration or the logs: only their SHA-256 is configured, a
//! presented token is hashed and compared against every configured hash in constant time.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `POST /event`, `POST /api/v1/events`.
    EventsWrite,
    /// `PUT /api/v1/users/{id}/risk`.
    ProfilesWrite,
    /// Every rules write (rule sets as data).
    RulesWrite,
    /// `PATCH /api/v1/alerts/{id}`: the triage of alerts.
    AlertsWrite,
    /// Every `GET` of the API.
    Read,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::EventsWrite,
        Scope::ProfilesWrite,
        Scope::RulesWrite,
        Scope::AlertsWrite,
        Scope::Read,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EventsWrite => "events:write",
            Scope::ProfilesWrite => "profiles:write",
            Scope::RulesWrite => "rules:write",
            Scope::AlertsWrite => "alerts:write",
            Scope::Read => "read",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown scope {s:?} (scopes: events:write, profiles:write, rules:write, alerts:write, read)"
                )
            })
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One configured token: a name (the "who" of the audit trail), the SHA-256 of its secret, and
/// its scopes.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    /// Lowercase hex SHA-256 of the secret (never the secret).
    pub sha256: String,
    pub scopes: Vec<Scope>,
}

/// The file named by `http.auth.tokens_file`: `[[tokens]]` entries shaped like
/// `[[http.auth.tokens]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenConfig>,
}

/// The validated token table.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    hash: [u8; 32],
    scopes: BTreeSet<Scope>,
}

/// Who a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name, or `anonymous` when authentication is off.
    pub name: String,
}

impl Principal {
    pub fn anonymous() -> Self {
        Principal {
            name: "anonymous".to_owned(),
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("authentication required: send Authorization: Bearer <token>")]
    Missing,
    #[error("invalid token")]
    Invalid,
    #[error("token {name:?} lacks the scope {scope} this endpoint requires")]
    Scope { name: String, scope: Scope },
}

impl Tokens {
    /// Validates `inline` tokens plus those of `file` (its text), naming every bad entry.
    pub fn new(inline: &[TokenConfig], file: Option<&str>) -> Result<Self, String> {
        let mut all: Vec<TokenConfig> = inline.to_vec();
        if let Some(text) = file {
            let parsed: TokensFile =
                toml::from_str(text).map_err(|e| format!("tokens file: {e}"))?;
            all.extend(parsed.tokens);
        }
        let mut errors = Vec::new();
        let mut entries: Vec<Entry> = Vec::new();
        for (i, token) in all.iter().enumerate() {
            let name = token.name.trim();
            if name.is_empty() {
                errors.push(format!("token[{i}]: name must not be empty"));
            } else if entries.iter().any(|e| e.name == name) {
                errors.push(format!("token[{i}] ({name}): name is used twice"));
            }
            let hash = match parse_hash(&token.sha256) {
                Some(hash) => hash,
                None => {
                    errors.push(format!(
                        "token[{i}] ({name}): sha256 must be 64 hex digits (the SHA-256 of the secret, as `user-monitor token new` prints it)"
                    ));
                    [0; 32]
                }
            };
            if token.scopes.is_empty() {
                errors.push(format!("token[{i}] ({name}): scopes must not be empty"));
            }
            entries.push(Entry {
                name: name.to_owned(),
                hash,
                scopes: token.scopes.iter().copied().collect(),
            });
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(Tokens { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Who presents `secret` (a bearer token; `None`: none presented), if it may use `scope`.
    pub fn check(&self, secret: Option<&str>, scope: Scope) -> Result<Principal, Denied> {
        let secret = secret.ok_or(Denied::Missing)?;
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        // Compare against every entry, in constant time each, whatever matches first.
        let mut found: Option<&Entry> = None;
        for entry in &self.entries {
            if constant_time_eq(&entry.hash, &presented) {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(Denied::Invalid)?;
        if !entry.scopes.contains(&scope) {
            return Err(Denied::Scope {
                name: entry.name.clone(),
                scope,
            });
        }
        Ok(Principal {
            name: entry.name.clone(),
        })
    }
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The lowercase hex SHA-256 of a secret, as configured.
pub fn sha256_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh secret: 32 random bytes from the operating system, hex, with a recognisable prefix.
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("umt_{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scope_is_configured_by_its_name_and_an_unknown_one_lists_them_all() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
        assert_eq!("alerts:write".parse::<Scope>(), Ok(Scope::AlertsWrite));
        let error = "alerts:read".parse::<Scope>().unwrap_err();
        for scope in Scope::ALL {
            assert!(error.contains(scope.as_str()), "{error}");
        }
    }
}
