//! User authentication: HS256 JWTs in the `authorization: Bearer` metadata.
//!
//! Every VoiceService call passes through [`Authenticator`] as a tonic
//! interceptor, which verifies the token before any handler runs and puts the
//! caller's [`UserId`] into the request extensions. A handler therefore never
//! sees an unauthenticated request. Health and reflection are not intercepted.
//! Failures say what is wrong with the token (missing, malformed, expired,
//! bad signature) but never echo the token.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tonic::{Request, Status, service::Interceptor};
use uuid::Uuid;

use crate::error::Error;

/// How user tokens are signed and what they must carry.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The HS256 secret.
    pub secret: SecretString,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// True when the secret was generated locally rather than configured.
    pub development: bool,
}

/// The longest `authorization` value looked at. Longer ones are refused
/// for their call (the server's HTTP/2 header limit is far above this, so
/// an oversized token never costs the connection its other calls).
pub const MAX_AUTHORIZATION_BYTES: usize = 8 * 1024;

/// The authenticated caller, as found in the token's `sub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId(pub Uuid);

/// When the token of an authenticated call stops being accepted: a stream
/// opened with it ends then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ValidUntil(pub(crate) SystemTime);

/// Where the authenticator leaves the caller for whoever observes the call
/// from outside the service (the RPC log): put into a request's extensions
/// before it reaches the interceptor, filled when the token is verified.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallerSlot(Arc<OnceLock<Uuid>>);

impl CallerSlot {
    /// The caller, once authenticated.
    pub(crate) fn get(&self) -> Option<Uuid> {
        self.0.get().copied()
    }
}

// Defaults let a token without `sub`/`exp` reach jsonwebtoken's claim check,
// which names what is missing, instead of failing as "malformed".
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// Verifies and mints user tokens. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Keys>,
}

struct Keys {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Authenticator {
    /// An authenticator for tokens signed as `config` says.
    #[must_use]
    pub fn new(config: &AuthConfig) -> Self {
        let secret = config.secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        // jsonwebtoken checks `iss`/`aud` only when the token carries them, so a
        // configured one must also be required, or a token without it would pass.
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        // A token may name when it starts to be valid; honour it.
        validation.validate_nbf = true;
        Authenticator {
            inner: Arc::new(Keys {
                decoding: DecodingKey::from_secret(secret),
                encoding: EncodingKey::from_secret(secret),
                validation,
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
            }),
        }
    }

    /// Checks an `authorization` metadata value and returns the caller.
    ///
    /// # Errors
    /// [`Error::Unauthenticated`] saying what is wrong with the token.
    pub fn verify(&self, authorization: Option<&str>) -> Result<UserId, Error> {
        self.verify_until(authorization).map(|(user, _)| user)
    }

    /// As [`Authenticator::verify`], with the moment the token stops being
    /// accepted (its `exp` plus the clock leeway): streams end there.
    ///
    /// # Errors
    /// As [`Authenticator::verify`].
    pub fn verify_until(&self, authorization: Option<&str>) -> Result<(UserId, SystemTime), Error> {
        let header = authorization.ok_or(Error::Unauthenticated(
            "missing authorization metadata: send 'authorization: Bearer <token>'",
        ))?;
        // Before any parsing: a user token is a few hundred bytes.
        if header.len() > MAX_AUTHORIZATION_BYTES {
            return Err(Error::Unauthenticated(
                "token is too long (the authorization metadata holds at most 8 KiB)",
            ));
        }
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Error::Unauthenticated(
                "authorization metadata must be 'Bearer <token>'",
            ))?;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.inner.decoding, &self.inner.validation)
                .map_err(|e| {
                    Error::Unauthenticated(match e.kind() {
                        ErrorKind::ExpiredSignature => "token has expired",
                        ErrorKind::InvalidSignature => "token signature is invalid",
                        ErrorKind::InvalidIssuer => "token issuer is not accepted",
                        ErrorKind::InvalidAudience => "token audience is not accepted",
                        ErrorKind::ImmatureSignature => "token is not valid yet",
                        ErrorKind::MissingRequiredClaim(_) => {
                            "token lacks a required claim (sub, exp)"
                        }
                        ErrorKind::InvalidAlgorithm => "token must be signed with HS256",
                        _ => "token is malformed",
                    })
                })?;
        // Issued in the future (beyond the same clock leeway `exp` and `nbf`
        // get): minted by a wrong clock or forged to outlive its issuer's rules.
        let leeway = self.inner.validation.leeway;
        if data
            .claims
            .iat
            .is_some_and(|iat| iat > jsonwebtoken::get_current_timestamp() + leeway)
        {
            return Err(Error::Unauthenticated(
                "token is issued in the future (iat)",
            ));
        }
        let until = UNIX_EPOCH + Duration::from_secs(data.claims.exp.saturating_add(leeway));
        Ok((user_of(&data.claims.sub)?, until))
    }

    /// Signs a token for `user`, valid for `ttl`, with the configured issuer
    /// and audience.
    ///
    /// # Errors
    /// Only if signing itself fails, which HS256 does not do in practice.
    pub fn mint(&self, user: Uuid, ttl: Duration) -> anyhow::Result<String> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user.to_string(),
            exp: now + ttl.as_secs(),
            iat: Some(now),
            iss: self.inner.issuer.clone(),
            aud: self.inner.audience.clone(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.inner.encoding,
        )?)
    }
}

/// The user a token's `sub` names. One spelling per user: the lowercase,
/// hyphenated UUID (the form `mint` writes), so `{…}`, `urn:uuid:…`, upper
/// case or a UUID without hyphens cannot pass for the same user; and never
/// the nil UUID, which is nobody.
fn user_of(sub: &str) -> Result<UserId, Error> {
    match Uuid::parse_str(sub) {
        Ok(user) if !user.is_nil() && user.hyphenated().to_string() == sub => Ok(UserId(user)),
        _ => Err(Error::Unauthenticated(
            "token subject (sub) is not a user UUID (lowercase, hyphenated, not nil)",
        )),
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        // Two credentials are ambiguous: which user is calling?
        if request.metadata().get_all("authorization").iter().count() > 1 {
            return Err(
                Error::Unauthenticated("send exactly one authorization metadata entry").into(),
            );
        }
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| {
                v.to_str()
                    .map_err(|_| Error::Unauthenticated("token is malformed"))
            })
            .transpose()?;
        let (user, until) = self.verify_until(header)?;
        if let Some(slot) = request.extensions().get::<CallerSlot>() {
            let _ = slot.0.set(user.0);
        }
        request.extensions_mut().insert(user);
        request.extensions_mut().insert(ValidUntil(until));
        Ok(request)
    }
}

/// The caller of a request that passed the interceptor.
///
/// # Errors
/// [`Error::Unauthenticated`] if the service was mounted without the
/// interceptor, which is a wiring bug, so it fails closed.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<UserId, Error> {
    request
        .extensions()
        .get::<UserId>()
        .copied()
        .ok_or(Error::Unauthenticated("missing authorization metadata"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: &str, issuer: Option<&str>, audience: Option<&str>) -> AuthConfig {
        AuthConfig {
            secret: SecretString::from(secret.to_owned()),
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            development: false,
        }
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn minted_token_verifies_to_its_user() {
        let auth = Authenticator::new(&config(SECRET, Some("iss"), Some("aud")));
        let user = Uuid::new_v4();
        let token = auth.mint(user, Duration::from_mins(1)).unwrap();
        assert_eq!(
            auth.verify(Some(&format!("Bearer {token}"))).unwrap(),
            UserId(user)
        );
    }

    #[test]
    fn issuer_and_audience_are_enforced_when_configured() {
        let plain = Authenticator::new(&config(SECRET, None, None));
        let token = plain.mint(Uuid::new_v4(), Duration::from_mins(1)).unwrap();
        let strict = Authenticator::new(&config(SECRET, Some("voicehub"), None));
        assert!(matches!(
            strict.verify(Some(&format!("Bearer {token}"))),
            Err(Error::Unauthenticated(m)) if m.contains("lacks") || m.contains("issuer")
        ));
        let aud = Authenticator::new(&config(SECRET, None, Some("tts")));
        let other_aud = Authenticator::new(&config(SECRET, None, Some("other")));
        let token = other_aud
            .mint(Uuid::new_v4(), Duration::from_mins(1))
            .unwrap();
        assert!(matches!(
            aud.verify(Some(&format!("Bearer {token}"))),
            Err(Error::Unauthenticated("token audience is not accepted"))
        ));
    }
}
