//! The API key as the wandb SDK finds it: `WANDB_API_KEY`, else netrc.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;

use super::{Result, WandbError};

/// An API key. It is only ever put into an `Authorization` header; `Debug` hides it so no log
/// line or error message can carry it.
#[derive(Clone)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<hidden>)")
    }
}

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key the wandb SDK would use for `base_url`: `WANDB_API_KEY`, else the password of
    /// the netrc entry (`$NETRC` or `~/.netrc`) for the URL's host[:port], else of its
    /// `default` entry. No key is an error, since tracking was asked for.
    pub fn from_env(base_url: &str) -> Result<Self> {
        if let Ok(key) = std::env::var("WANDB_API_KEY") {
            if !key.trim().is_empty() {
                return Ok(Self(key.trim().to_owned()));
            }
        }
        let host = netloc(base_url)?;
        let path = match std::env::var_os("NETRC") {
            Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
            _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".netrc")),
        };
        if let Some(path) = path {
            match fs::read_to_string(&path) {
                Ok(text) => {
                    if let Some(key) = netrc_password(&text, &host, &path)? {
                        return Ok(Self(key));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(WandbError::Io { path, source }),
            }
        }
        Err(WandbError::MissingKey { host })
    }

    pub(crate) fn basic_auth(&self) -> String {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("api:{}", self.0));
        format!("Basic {token}")
    }
}

/// The `host[:port]` of a URL, which is how the wandb SDK names its netrc machine.
pub(crate) fn netloc(url: &str) -> Result<String> {
    let bad = |what: &str| WandbError::BaseUrl {
        url: url.to_owned(),
        what: what.to_owned(),
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit('@').next().unwrap_or_default();
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    Ok(host.to_owned())
}

/// The password of `machine`'s entry (or of the `default` entry) in netrc text, read as
/// Python's `netrc` module reads it: whitespace-separated tokens, `"quoted"` tokens with
/// backslash escapes, `#` comments, and `macdef` bodies (up to a blank line) skipped.
pub fn netrc_password(text: &str, machine: &str, path: &Path) -> Result<Option<String>> {
    let tokens = netrc_tokens(text, path)?;
    let mut found: Option<String> = None;
    let mut default: Option<String> = None;
    let mut i = 0;
    while i < tokens.len() {
        let is_default = match tokens[i].as_str() {
            "machine" => false,
            "default" => true,
            other => {
                return Err(WandbError::Netrc {
                    path: path.to_path_buf(),
                    what: format!("expected `machine` or `default`, found {other:?}"),
                })
            }
        };
        let name = if is_default {
            i += 1;
            None
        } else {
            let name = tokens.get(i + 1).ok_or_else(|| WandbError::Netrc {
                path: path.to_path_buf(),
                what: "`machine` without a name at the end of the file".into(),
            })?;
            i += 2;
            Some(name.as_str())
        };
        let mut password = None;
        while i < tokens.len() && !matches!(tokens[i].as_str(), "machine" | "default") {
            let key = tokens[i].as_str();
            if !matches!(key, "login" | "user" | "account" | "password") {
                return Err(WandbError::Netrc {
                    path: path.to_path_buf(),
                    what: format!("unknown netrc token {key:?}"),
                });
            }
            let value = tokens.get(i + 1).ok_or_else(|| WandbError::Netrc {
                path: path.to_path_buf(),
                what: format!("`{key}` without a value at the end of the file"),
            })?;
            if key == "password" {
                password = Some(value.clone());
            }
            i += 2;
        }
        // Like Python's netrc, a later entry for the same machine replaces an earlier one.
        match name {
            Some(n) if n == machine => found = password.or(found),
            Some(_) => {}
            None => default = password.or(default),
        }
    }
    Ok(found.or(default).filter(|p| !p.is_empty()))
}

/// Splits netrc text into tokens, dropping comments and macro definitions.
fn netrc_tokens(text: &str, path: &Path) -> Result<Vec<String>> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut skip_macro = false;
    while let Some(&c) = chars.peek() {
        if skip_macro {
            // A macro body runs to the first empty line.
            let mut line = String::new();
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
                line.push(c);
            }
            if line.trim().is_empty() {
                skip_macro = false;
            }
            continue;
        }
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '#' {
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
            continue;
        }
        let mut token = String::new();
        if c == '"' {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => token.extend(chars.next()),
                    c => token.push(c),
                }
            }
            if !closed {
                return Err(WandbError::Netrc {
                    path: path.to_path_buf(),
                    what: "a quoted token is not closed".into(),
                });
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    token.extend(chars.next());
                } else {
                    token.push(c);
                }
            }
        }
        if token == "macdef" {
            // The macro's name is on the same line; its body follows on the next lines.
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
            skip_macro = true;
            continue;
        }
        tokens.push(token);
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wandb::Client;

    fn password(text: &str, machine: &str) -> Option<String> {
        netrc_password(text, machine, Path::new("netrc")).unwrap()
    }

    #[test]
    fn netrc_as_wandb_login_writes_it() {
        let text = "machine api.wandb.ai\n  login user\n  password abc123\n";
        assert_eq!(password(text, "api.wandb.ai").as_deref(), Some("abc123"));
        assert_eq!(password(text, "example.com"), None);
    }

    #[test]
    fn netrc_one_line_entries_default_comments_quotes_and_macros() {
        let text = "# keys\nmachine a.example login x password one\n\
                    macdef init\ncd /tmp\nmachine fake password nope\n\n\
                    machine localhost:8080 login \"me\" password \"two words\\\"q\"\n\
                    default login anon password fallback\n";
        assert_eq!(password(text, "a.example").as_deref(), Some("one"));
        assert_eq!(
            password(text, "localhost:8080").as_deref(),
            Some("two words\"q")
        );
        assert_eq!(password(text, "fake").as_deref(), Some("fallback"));
        assert_eq!(password(text, "other").as_deref(), Some("fallback"));
    }

    #[test]
    fn netrc_errors_name_the_file_and_problem() {
        let err = netrc_password("machine", "x", Path::new("/h/.netrc")).unwrap_err();
        assert!(err.to_string().contains("/h/.netrc"), "{err}");
        let err = netrc_password("machine x login", "x", Path::new("n")).unwrap_err();
        assert!(err.to_string().contains("`login` without a value"), "{err}");
        let err = netrc_password("machine x passwd k", "x", Path::new("n")).unwrap_err();
        assert!(err.to_string().contains("passwd"), "{err}");
        let err = netrc_password("machine \"x", "x", Path::new("n")).unwrap_err();
        assert!(err.to_string().contains("not closed"), "{err}");
    }

    #[test]
    fn netloc_keeps_the_port_as_the_sdk_does() {
        assert_eq!(netloc("https://api.wandb.ai").unwrap(), "api.wandb.ai");
        assert_eq!(netloc("http://127.0.0.1:9000/x").unwrap(), "127.0.0.1:9000");
        assert!(netloc("api.wandb.ai").is_err());
    }

    #[test]
    fn key_is_hidden_from_debug() {
        let key = ApiKey::new("secret-key-123");
        assert!(!format!("{key:?}").contains("secret"));
        let client = Client::new("http://127.0.0.1:1", key).unwrap();
        assert!(!format!("{client:?}").contains("secret"));
    }
}
