//! Token check before any write. `whoami-v2` says whose token it is, its role (`read`,
//! `write`, or `fineGrained` with per-entity permissions) and the user's organizations, which
//! is enough to refuse a push that the Hub would refuse halfway.

use serde_json::Value;

use super::http::{Body, Req};
use super::{HubClient, HubError, RepoId, Result};

/// Who the token belongs to, as `whoami-v2` answers.
#[derive(Debug, Clone, PartialEq)]
pub struct WhoAmI {
    pub name: String,
    pub orgs: Vec<String>,
    /// `auth.accessToken.role`; `None` for tokens that carry no role (OAuth).
    pub role: Option<String>,
    /// For fine-grained tokens: (entity name, permissions) of each scoped grant.
    pub scoped: Vec<(String, Vec<String>)>,
}

/// What the token may do with a repo in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessCheck {
    /// The role says so.
    Write,
    /// The token carries no role to judge (OAuth); the Hub decides.
    Unknown,
}

impl WhoAmI {
    /// Reads the fields bora needs from a `whoami-v2` answer.
    pub fn from_json(v: &Value) -> Option<WhoAmI> {
        let name = v.get("name")?.as_str()?.to_owned();
        let orgs = v
            .get("orgs")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|o| o.get("name")?.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let token = v.pointer("/auth/accessToken");
        let role = token
            .and_then(|t| t.get("role"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let scoped = token
            .and_then(|t| t.pointer("/fineGrained/scoped"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| {
                        let entity = s.pointer("/entity/name")?.as_str()?.to_owned();
                        let perms = s
                            .get("permissions")?
                            .as_array()?
                            .iter()
                            .filter_map(|p| p.as_str().map(str::to_owned))
                            .collect();
                        Some((entity, perms))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(WhoAmI {
            name,
            orgs,
            role,
            scoped,
        })
    }

    /// Whether this token may create and write `repo`: a `write`/`admin` token in a namespace
    /// the user is or belongs to, or a fine-grained token with `repo.write` on the
    /// namespace or on the repo itself.
    pub fn check_write(&self, repo: &RepoId) -> Result<AccessCheck> {
        let ns = repo.namespace();
        let member = self.name == ns || self.orgs.iter().any(|o| o == ns);
        let no_access = |why: String| HubError::NoWriteAccess {
            user: self.name.clone(),
            namespace: ns.to_owned(),
            why,
        };
        match self.role.as_deref() {
            None => Ok(AccessCheck::Unknown),
            Some("write" | "admin") if member => Ok(AccessCheck::Write),
            Some("write" | "admin") => Err(no_access(format!(
                "`{}` is not `{ns}` and not a member of it (organizations: {})",
                self.name,
                if self.orgs.is_empty() {
                    "none".to_owned()
                } else {
                    self.orgs.join(", ")
                }
            ))),
            Some("fineGrained") => {
                let full = repo.to_string();
                let granted = self.scoped.iter().any(|(entity, perms)| {
                    (entity == ns || *entity == full) && perms.iter().any(|p| p == "repo.write")
                });
                if granted {
                    Ok(AccessCheck::Write)
                } else {
                    Err(no_access(format!(
                        "the fine-grained token has no `repo.write` permission on `{ns}` or `{full}`; add it in the token's settings"
                    )))
                }
            }
            Some(role) => Err(HubError::ReadOnlyToken {
                user: self.name.clone(),
                role: format!("a `{role}` token"),
            }),
        }
    }
}

impl HubClient {
    /// `GET /api/whoami-v2`.
    pub fn whoami(&self) -> Result<WhoAmI> {
        let req = Req {
            method: "GET",
            url: format!("{}/api/whoami-v2", self.endpoint),
            auth: true,
            headers: vec![],
            body: Body::Empty,
        };
        let r = self.send(&req)?;
        if r.status == 401 {
            return Err(HubError::InvalidToken {
                endpoint: self.endpoint.clone(),
            });
        }
        if r.status != 200 {
            return Err(self.status_error(&req, r));
        }
        serde_json::from_str::<Value>(&r.body)
            .ok()
            .as_ref()
            .and_then(WhoAmI::from_json)
            .ok_or_else(|| HubError::Protocol {
                url: req.url.clone(),
                what: "expected a JSON object with `name`".into(),
            })
    }

    /// Checks the token may write `repo` before anything is created or sent.
    pub fn check_write_access(&self, repo: &RepoId) -> Result<(WhoAmI, AccessCheck)> {
        let me = self.whoami()?;
        let check = me.check_write(repo)?;
        Ok((me, check))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn me(role: &str, scoped: Value) -> WhoAmI {
        WhoAmI::from_json(&json!({
            "type": "user", "name": "ada", "orgs": [{"name": "bora-ml", "roleInOrg": "write"}],
            "auth": {"type": "access_token", "accessToken": {
                "displayName": "t", "role": role, "fineGrained": {"scoped": scoped}}}
        }))
        .unwrap()
    }

    #[test]
    fn roles_decide_write_access() {
        let repo = RepoId::parse("bora-ml/x").unwrap();
        assert_eq!(
            me("write", json!([])).check_write(&repo).unwrap(),
            AccessCheck::Write
        );
        let own = RepoId::parse("ada/x").unwrap();
        assert_eq!(
            me("write", json!([])).check_write(&own).unwrap(),
            AccessCheck::Write
        );
        let other = RepoId::parse("someone/x").unwrap();
        let e = me("write", json!([])).check_write(&other).unwrap_err();
        assert!(e.to_string().contains("not a member"), "{e}");
        let e = me("read", json!([])).check_write(&repo).unwrap_err();
        assert!(matches!(e, HubError::ReadOnlyToken { .. }), "{e}");
        let fine = json!([{"entity": {"type": "org", "name": "bora-ml"},
                           "permissions": ["repo.content.read", "repo.write"]}]);
        assert_eq!(
            me("fineGrained", fine).check_write(&repo).unwrap(),
            AccessCheck::Write
        );
        let read_only = json!([{"entity": {"type": "org", "name": "bora-ml"},
                                "permissions": ["repo.content.read"]}]);
        let e = me("fineGrained", read_only).check_write(&repo).unwrap_err();
        assert!(e.to_string().contains("repo.write"), "{e}");
        let oauth = WhoAmI::from_json(&json!({"name": "ada", "auth": {"type": "oauth"}})).unwrap();
        assert_eq!(oauth.check_write(&repo).unwrap(), AccessCheck::Unknown);
    }
}
