//! Who may post to an endpoint: Argo's bearer token (`authSecret`) and a
//! GitHub-style HMAC-SHA256 signature of the body (`flowControl.signature`).
//!
//! Guarantees: secrets are compared in constant time (the bearer token with
//! `subtle`, the signature with `hmac`'s constant-time `verify_slice`), so
//! response timing does not reveal how much of a guess was right (only,
//! for the bearer token, whether its length was). Everything that can be
//! decided from the headers is ([`Auth::check_headers`]), so a request
//! without credentials is refused before its body is read; only a
//! well-formed signature costs a body read and an HMAC.
//!
//! Not guaranteed: replay protection. A captured signed request can be
//! sent again (as with GitHub's own webhooks); the event id differs, the
//! payload does not.

use crate::secrets::SecretValue;
use axum::http::{header, HeaderMap, HeaderName};
use hmac::{KeyInit, Mac};
use subtle::ConstantTimeEq;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// GitHub's signature header, the default of `flowControl.signature.header`.
pub const DEFAULT_SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// Prefix of the signature header's value, as GitHub sends it.
const SIGNATURE_PREFIX: &str = "sha256=";

/// The credentials one endpoint requires (none by default).
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// `Authorization: Bearer <token>` must carry exactly this token.
    pub bearer: Option<SecretValue>,
    /// The body must be signed with this key.
    pub signature: Option<SignatureCheck>,
}

/// A keyed HMAC-SHA256 and the header its signature arrives in.
#[derive(Clone)]
pub struct SignatureCheck {
    header: HeaderName,
    keyed: HmacSha256,
}

impl std::fmt::Debug for SignatureCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureCheck")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl SignatureCheck {
    /// HMAC takes keys of any length, so the error is only the type's.
    pub fn new(
        header: HeaderName,
        key: &SecretValue,
    ) -> Result<SignatureCheck, hmac::digest::InvalidLength> {
        let keyed = HmacSha256::new_from_slice(key.as_bytes())?;
        Ok(SignatureCheck { header, keyed })
    }

    pub fn header(&self) -> &HeaderName {
        &self.header
    }
}

/// A signature read from the headers, to check once the body is read.
#[derive(Debug)]
pub struct PendingSignature {
    tag: Vec<u8>,
}

/// Why a request was refused with 401. The text is safe to send back: it
/// says what was wrong, never what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing `Authorization: Bearer <token>` header")]
    MissingBearer,
    #[error("the bearer token is not valid")]
    WrongBearer,
    #[error("missing {0} signature header")]
    MissingSignature(HeaderName),
    #[error("{0} must be `sha256=` followed by 64 hex digits")]
    MalformedSignature(HeaderName),
    #[error("{0} does not match the body")]
    WrongSignature(HeaderName),
}

impl Auth {
    /// Checks the bearer token and reads the signature header. `Ok(Some)`
    /// when the body still has to be checked with [`Auth::check_body`].
    pub fn check_headers(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<PendingSignature>, AuthError> {
        if let Some(expected) = &self.bearer {
            let token = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| bearer_token(v.as_bytes()))
                .ok_or(AuthError::MissingBearer)?;
            if !bool::from(token.ct_eq(expected.as_bytes())) {
                return Err(AuthError::WrongBearer);
            }
        }
        let Some(check) = &self.signature else {
            return Ok(None);
        };
        let value = headers
            .get(&check.header)
            .ok_or_else(|| AuthError::MissingSignature(check.header.clone()))?;
        let tag = value
            .to_str()
            .ok()
            .and_then(|v| {
                let v = v.trim();
                let prefix = v.get(..SIGNATURE_PREFIX.len())?;
                prefix
                    .eq_ignore_ascii_case(SIGNATURE_PREFIX)
                    .then(|| decode_hex(&v[SIGNATURE_PREFIX.len()..]))?
            })
            .filter(|tag| tag.len() == 32)
            .ok_or_else(|| AuthError::MalformedSignature(check.header.clone()))?;
        Ok(Some(PendingSignature { tag }))
    }

    /// Checks `pending` (from [`Auth::check_headers`]) against the body.
    pub fn check_body(&self, pending: PendingSignature, body: &[u8]) -> Result<(), AuthError> {
        let Some(check) = &self.signature else {
            return Ok(());
        };
        let mut mac = check.keyed.clone();
        mac.update(body);
        mac.verify_slice(&pending.tag)
            .map_err(|_| AuthError::WrongSignature(check.header.clone()))
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 7235).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let scheme = value.get(..SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = value[SCHEME.len()..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Hex digits (either case) to bytes; `None` on anything else.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::SecretKeySelector;
    use crate::config::Spanned;
    use crate::secrets::SecretStore;
    use axum::http::HeaderValue;

    fn secret(value: &'static str) -> SecretValue {
        let selector = SecretKeySelector {
            name: Spanned::new("s".to_string(), Default::default()),
            key: Spanned::new("k".to_string(), Default::default()),
        };
        SecretStore::with_env("/nonexistent", move |_| Some(value.into()))
            .resolve(&selector)
            .expect("secret")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::try_from(*name).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn signing(key: &'static str) -> Auth {
        Auth {
            bearer: None,
            signature: Some(
                SignatureCheck::new(
                    HeaderName::from_static(DEFAULT_SIGNATURE_HEADER),
                    &secret(key),
                )
                .expect("any key length"),
            ),
        }
    }

    #[test]
    fn bearer_tokens() {
        let auth = Auth {
            bearer: Some(secret("t0ken")),
            signature: None,
        };
        assert_eq!(
            auth.check_headers(&headers(&[("authorization", "Bearer t0ken")]))
                .map(|p| p.is_none()),
            Ok(true)
        );
        assert!(auth
            .check_headers(&headers(&[("authorization", "bearer  t0ken ")]))
            .is_ok());
        assert_eq!(
            auth.check_headers(&headers(&[])).err(),
            Some(AuthError::MissingBearer)
        );
        assert_eq!(
            auth.check_headers(&headers(&[("authorization", "Basic t0ken")]))
                .err(),
            Some(AuthError::MissingBearer)
        );
        for wrong in ["Bearer t0ke", "Bearer t0kenn", "Bearer T0KEN"] {
            assert_eq!(
                auth.check_headers(&headers(&[("authorization", wrong)]))
                    .err(),
                Some(AuthError::WrongBearer),
                "{wrong}"
            );
        }
    }

    /// GitHub's documented example: secret "It's a Secret to Everybody",
    /// payload "Hello, World!".
    #[test]
    fn github_signature_example() {
        let auth = signing("It's a Secret to Everybody");
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let pending = auth
            .check_headers(&headers(&[("x-hub-signature-256", good)]))
            .expect("well formed")
            .expect("a signature to check");
        assert_eq!(auth.check_body(pending, b"Hello, World!"), Ok(()));

        let pending = auth
            .check_headers(&headers(&[("x-hub-signature-256", good)]))
            .expect("well formed")
            .expect("a signature to check");
        assert!(matches!(
            auth.check_body(pending, b"Hello, World?"),
            Err(AuthError::WrongSignature(_))
        ));
    }

    #[test]
    fn malformed_or_missing_signatures_are_refused_before_the_body() {
        let auth = signing("key");
        assert!(matches!(
            auth.check_headers(&headers(&[])),
            Err(AuthError::MissingSignature(_))
        ));
        for bad in [
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=zz",
            "sha256=757107ea",
            "sha256=",
        ] {
            assert!(
                matches!(
                    auth.check_headers(&headers(&[("x-hub-signature-256", bad)])),
                    Err(AuthError::MalformedSignature(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn hex() {
        assert_eq!(decode_hex("00ffA0"), Some(vec![0, 255, 160]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("0g"), None);
        assert_eq!(decode_hex("é1"), None);
    }
}
