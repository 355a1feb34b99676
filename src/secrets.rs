//! Resolves Kubernetes `SecretKeySelector`s (`{name, key}`) without
//! Kubernetes, the two ways a pod gets a Secret:
//!
//! 1. an environment variable `SPILLWAY_SECRET_<NAME>_<KEY>` (name and key
//!    upper-cased, every character that is not a letter or digit turned
//!    into `_`), as `env: valueFrom: secretKeyRef` would provide it;
//! 2. the file `<secrets dir>/<name>/<key>`, as a Secret volume mounted at
//!    the secrets directory (`spillway run --secrets-dir`) lays it out.
//!
//! The variable wins when both exist. One trailing newline is stripped
//! from a file (editors and `echo` add one; a mounted Secret usually has
//! none).
//!
//! Guarantees: a resolved value is never empty; a value's `Debug` never
//! prints it, and no error message contains it (errors name the secret, the
//! variable and the file instead). Files over [`MAX_SECRET_BYTES`] are
//! refused rather than read whole. Selectors are validated by the config
//! (`SecretKeySelector::problems`), which keeps them inside the directory;
//! resolution refuses names with a path separator again in case a caller
//! skipped validation.
//!
//! Not guaranteed: secrets are read once; rotating one needs a restart.

use crate::config::values::SecretKeySelector;
use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;

/// The largest secret file read (a token or key, not a document).
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A secret's value. Its `Debug` is redacted so it cannot reach a log line
/// by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// Why a secret could not be resolved. Every variant names the secret and
/// where it was looked for, never its value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secret {name:?} key {key:?} not found: set the environment variable {env} \
         or create the file {}", path.display()
    )]
    Missing {
        name: String,
        key: String,
        env: String,
        path: PathBuf,
    },
    #[error("secret {name:?} key {key:?}: cannot read {}: {source}", path.display())]
    Unreadable {
        name: String,
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret {name:?} key {key:?} (from {from}) is empty")]
    Empty {
        name: String,
        key: String,
        from: String,
    },
    #[error("secret {name:?} key {key:?}: {} is larger than {MAX_SECRET_BYTES} bytes", path.display())]
    TooLarge {
        name: String,
        key: String,
        path: PathBuf,
    },
    #[error("secret {name:?} key {key:?}: a secret name or key cannot contain a path")]
    InvalidName { name: String, key: String },
}

/// Looks up an environment variable (the process's, or a test's).
type EnvLookup = Box<dyn Fn(&str) -> Option<OsString> + Send + Sync>;

/// Where secrets come from: the process environment and a directory.
pub struct SecretStore {
    dir: PathBuf,
    env: EnvLookup,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl SecretStore {
    /// Secrets from this process's environment, then from files under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> SecretStore {
        SecretStore::with_env(dir, |name| std::env::var_os(name))
    }

    /// Like [`SecretStore::new`] with another environment (tests).
    pub fn with_env(
        dir: impl Into<PathBuf>,
        env: impl Fn(&str) -> Option<OsString> + Send + Sync + 'static,
    ) -> SecretStore {
        SecretStore {
            dir: dir.into(),
            env: Box::new(env),
        }
    }

    /// The value `selector` points at.
    pub fn resolve(&self, selector: &SecretKeySelector) -> Result<SecretValue, SecretError> {
        let name = selector.name.value.as_str();
        let key = selector.key.value.as_str();
        let unsafe_part = |part: &str| part.contains(['/', '\\']) || part == ".." || part == ".";
        if unsafe_part(name) || unsafe_part(key) || name.is_empty() || key.is_empty() {
            return Err(SecretError::InvalidName {
                name: name.to_string(),
                key: key.to_string(),
            });
        }
        let env = env_var_name(name, key);
        let empty = |from: String| SecretError::Empty {
            name: name.to_string(),
            key: key.to_string(),
            from,
        };
        if let Some(value) = (self.env)(&env) {
            let value = value.into_encoded_bytes();
            if value.is_empty() {
                return Err(empty(format!("environment variable {env}")));
            }
            return Ok(SecretValue(value));
        }
        let path = self.dir.join(name).join(key);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SecretError::Missing {
                    name: name.to_string(),
                    key: key.to_string(),
                    env,
                    path,
                })
            }
            Err(source) => {
                return Err(SecretError::Unreadable {
                    name: name.to_string(),
                    key: key.to_string(),
                    path,
                    source,
                })
            }
        };
        let mut value = Vec::new();
        file.take(MAX_SECRET_BYTES + 1)
            .read_to_end(&mut value)
            .map_err(|source| SecretError::Unreadable {
                name: name.to_string(),
                key: key.to_string(),
                path: path.clone(),
                source,
            })?;
        if value.len() as u64 > MAX_SECRET_BYTES {
            return Err(SecretError::TooLarge {
                name: name.to_string(),
                key: key.to_string(),
                path,
            });
        }
        if value.ends_with(b"\n") {
            value.pop();
            if value.ends_with(b"\r") {
                value.pop();
            }
        }
        if value.is_empty() {
            return Err(empty(format!("file {}", path.display())));
        }
        Ok(SecretValue(value))
    }
}

/// `SPILLWAY_SECRET_<NAME>_<KEY>`, upper-cased, non-alphanumerics as `_`.
pub fn env_var_name(name: &str, key: &str) -> String {
    let shout = |part: &str| -> String {
        part.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("SPILLWAY_SECRET_{}_{}", shout(name), shout(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Spanned;
    use std::collections::HashMap;
    use std::path::Path;

    fn selector(name: &str, key: &str) -> SecretKeySelector {
        SecretKeySelector {
            name: Spanned::new(name.to_string(), Default::default()),
            key: Spanned::new(key.to_string(), Default::default()),
        }
    }

    fn store(dir: &Path, env: &[(&str, &str)]) -> SecretStore {
        let env: HashMap<String, OsString> = env
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        SecretStore::with_env(dir, move |name| env.get(name).cloned())
    }

    #[test]
    fn env_var_names_are_upper_case_with_underscores() {
        assert_eq!(
            env_var_name("webhook-auth", "token"),
            "SPILLWAY_SECRET_WEBHOOK_AUTH_TOKEN"
        );
        assert_eq!(
            env_var_name("gh.hooks", "hmac_key"),
            "SPILLWAY_SECRET_GH_HOOKS_HMAC_KEY"
        );
    }

    #[test]
    fn a_file_in_the_secret_folder_is_read_without_its_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("webhook-auth")).expect("mkdir");
        std::fs::write(dir.path().join("webhook-auth/token"), "s3cret\n").expect("write");
        let value = store(dir.path(), &[])
            .resolve(&selector("webhook-auth", "token"))
            .expect("resolved");
        assert_eq!(value.as_bytes(), b"s3cret");
        assert_eq!(format!("{value:?}"), "SecretValue(<redacted>)");
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("a")).expect("mkdir");
        std::fs::write(dir.path().join("a/k"), "from-file").expect("write");
        let value = store(dir.path(), &[("SPILLWAY_SECRET_A_K", "from-env")])
            .resolve(&selector("a", "k"))
            .expect("resolved");
        assert_eq!(value.as_bytes(), b"from-env");
    }

    #[test]
    fn a_missing_secret_names_both_places_and_no_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = store(dir.path(), &[])
            .resolve(&selector("webhook-auth", "token"))
            .expect_err("missing");
        let text = err.to_string();
        assert!(
            text.contains("\"webhook-auth\"") && text.contains("\"token\""),
            "{text}"
        );
        assert!(
            text.contains("SPILLWAY_SECRET_WEBHOOK_AUTH_TOKEN"),
            "{text}"
        );
        assert!(
            text.contains(&dir.path().join("webhook-auth/token").display().to_string()),
            "{text}"
        );
    }

    #[test]
    fn empty_and_oversized_secrets_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("a")).expect("mkdir");
        std::fs::write(dir.path().join("a/empty"), "\n").expect("write");
        std::fs::write(
            dir.path().join("a/big"),
            vec![b'x'; MAX_SECRET_BYTES as usize + 1],
        )
        .expect("write");
        let store = store(dir.path(), &[("SPILLWAY_SECRET_A_BLANK", "")]);
        assert!(matches!(
            store.resolve(&selector("a", "empty")),
            Err(SecretError::Empty { .. })
        ));
        assert!(matches!(
            store.resolve(&selector("a", "blank")),
            Err(SecretError::Empty { .. })
        ));
        assert!(matches!(
            store.resolve(&selector("a", "big")),
            Err(SecretError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_path_in_a_name_or_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path(), &[]);
        for (name, key) in [("..", "passwd"), ("a", "../../etc/passwd"), ("a/b", "k")] {
            assert!(
                matches!(
                    store.resolve(&selector(name, key)),
                    Err(SecretError::InvalidName { .. })
                ),
                "{name}/{key}"
            );
        }
    }
}
