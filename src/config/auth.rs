//! The user-token secret: configured, or generated once per installation
//! for development so that `serve` and `token` agree without set-up.

use std::{
    fmt::Write as _,
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use clap::Args;
use secrecy::SecretString;

use crate::auth::AuthConfig;

/// Where a development installation keeps its generated JWT secret.
pub const DEV_SECRET_FILE: &str = ".voicehub-dev-secret";
/// HS256 secrets shorter than this are guessable; production ones are refused.
const MIN_SECRET_LEN: usize = 32;

/// The user-token flags (`serve` and `token`).
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// HS256 secret that signs user tokens (at least 32 bytes). Unset: development
    /// mode with a secret generated once into `.voicehub-dev-secret`.
    #[arg(long, env = "VOICEHUB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// When set, tokens must carry this `iss`.
    #[arg(long, env = "VOICEHUB_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    #[arg(long, env = "VOICEHUB_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

impl AuthArgs {
    /// Resolves the signing secret: the configured one, or in development the
    /// one generated into `dir`/[`DEV_SECRET_FILE`] on first use.
    ///
    /// # Errors
    /// A configured secret that is too short, or an unreadable secret file.
    pub fn into_config(self, dir: &Path) -> anyhow::Result<AuthConfig> {
        let empty_to_none = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let (secret, development) = match empty_to_none(self.jwt_secret) {
            Some(secret) if secret.len() < MIN_SECRET_LEN => {
                bail!("VOICEHUB_JWT_SECRET must be at least {MIN_SECRET_LEN} bytes long")
            }
            Some(secret) => (SecretString::from(secret), false),
            None => (dev_secret(&dir.join(DEV_SECRET_FILE))?, true),
        };
        Ok(AuthConfig {
            secret,
            issuer: empty_to_none(self.jwt_issuer),
            audience: empty_to_none(self.jwt_audience),
            development,
        })
    }
}

/// Reads the development secret, creating it (mode 0600) on first use, so that
/// `serve` and `token` agree without configuration and no two installations share one.
fn dev_secret(path: &PathBuf) -> anyhow::Result<SecretString> {
    match fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= MIN_SECRET_LEN => {
            return Ok(SecretString::from(s.trim().to_owned()));
        }
        Ok(_) => bail!(
            "{} is too short; delete it to generate a new one",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let secret: String = bytes.iter().fold(String::new(), |mut hex, b| {
        // Writing into a String cannot fail.
        let _ = write!(hex, "{b:02x}");
        hex
    });
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(SecretString::from(secret))
        }
        // Another process (say `token` beside `serve`) won the race: use its secret.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let s =
                fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(SecretString::from(s.trim().to_owned()))
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn auth(secret: Option<&str>) -> AuthArgs {
        AuthArgs {
            jwt_secret: secret.map(str::to_owned),
            jwt_issuer: None,
            jwt_audience: Some(" ".into()),
        }
    }

    #[test]
    fn short_configured_secret_is_refused_with_the_variable_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = auth(Some("short")).into_config(dir.path()).unwrap_err();
        assert!(err.to_string().contains("VOICEHUB_JWT_SECRET"), "{err}");
    }

    #[test]
    fn development_secret_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = auth(None).into_config(dir.path()).unwrap();
        let second = auth(None).into_config(dir.path()).unwrap();
        assert!(first.development);
        assert_eq!(first.secret.expose_secret(), second.secret.expose_secret());
        assert_eq!(first.secret.expose_secret().len(), 64);
        assert_eq!(first.audience, None, "a blank audience means unset");
        let other = tempfile::tempdir().unwrap();
        let third = auth(None).into_config(other.path()).unwrap();
        assert_ne!(first.secret.expose_secret(), third.secret.expose_secret());
    }
}
