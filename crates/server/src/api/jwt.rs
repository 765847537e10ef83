//! JWT auth tokens (`--auth-token jwt,...`), with etcd 3.4's options and claims.
//!
//! * Options: `sign-method` (required: RS256/384/512, PS256/384/512, ES256/384, HS256/384/512),
//!   `priv-key` and `pub-key` (PEM files; for HS* the whole `priv-key` file is the shared
//!   secret), `ttl` (a Go duration, default 5m). A member given only `pub-key` verifies tokens
//!   but issues none (etcd's verify-only mode).
//! * Claims: `username`, `revision` (the auth revision at issue) and `exp` (Unix seconds), as
//!   etcd writes them. A token is good while its signature verifies with this member's key,
//!   with the configured algorithm, and `exp` has not passed (no leeway); the caller then
//!   compares `revision` with the applied auth revision (see [`crate::api::auth`]).
//! * Signing and verification are `jsonwebtoken`'s (on ring); this module loads and checks the
//!   keys, so that a bad key is a startup error rather than a refused login later.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use ring::signature::{self as rsig, KeyPair};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::FromDer;

/// etcd's default `ttl` option.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// A token longer than this is refused without parsing (an RS512 token signed with a 4096-bit
/// key is about 900 bytes).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Verified tokens remembered at most (see [`JwtKeys::verify`]).
const MAX_VERIFIED: usize = 10_000;
/// A key file larger than this is refused (PEM keys are a few kilobytes).
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

const SIGN_METHODS: &str = "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, HS256, HS384, HS512";

/// The claims of a token, in etcd's names (and its JSON key order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub exp: u64,
    pub revision: u64,
    pub username: String,
}

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// Only a public key is configured (etcd's `ErrVerifyOnly` text).
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    #[error("auth: cannot sign a token: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// Why `--auth-token` cannot be used: the text names the option at fault.
#[derive(Debug, thiserror::Error)]
pub enum AuthTokenError {
    #[error("--auth-token: empty token type (expected simple or jwt,<options>)")]
    EmptyType,
    #[error("--auth-token {0:?}: unknown token type (expected simple or jwt)")]
    UnknownType(String),
    #[error("--auth-token: option {0:?} is not key=value")]
    NotKeyValue(String),
    #[error("--auth-token: option {0} is given twice")]
    Repeated(String),
    #[error("--auth-token simple takes no options")]
    SimpleWithOptions,
    #[error("--auth-token jwt: {0}")]
    Jwt(#[from] JwtError),
}

/// Why the options of `--auth-token jwt,...` or their key files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("unknown option {0} (known: sign-method, pub-key, priv-key, ttl)")]
    UnknownOption(String),
    #[error("sign-method is required (one of {SIGN_METHODS})")]
    NoSignMethod,
    #[error("sign-method ES512 is not supported (no P-521 keys); use ES256 or ES384")]
    Es512,
    #[error("unknown sign-method {0:?} (expected one of {SIGN_METHODS})")]
    UnknownSignMethod(String),
    #[error("ttl {0:?} is not a duration (e.g. 5m, 30s, 1h)")]
    TtlNotADuration(String),
    #[error("ttl {0:?} must be at least 1s")]
    TtlTooShort(String),
    #[error("{0:?} signs with the shared secret in priv-key; pub-key is not used")]
    PubKeyWithSecret(Algorithm),
    #[error("no key: give priv-key (and pub-key) files")]
    NoKey,
    #[error("cannot read {option} {path}: {source}")]
    Read { option: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{option} {path}: {len} bytes is too large for a key file")]
    TooLarge { option: &'static str, path: PathBuf, len: u64 },
    #[error("{option} {path} is empty")]
    Empty { option: &'static str, path: PathBuf },
    #[error("{option} {path} is not a PEM file: {source}")]
    NotPem { option: &'static str, path: PathBuf, source: x509_parser::error::PEMError },
    /// The PEM block is of another kind (`found` is its label).
    #[error("{option} {path}: expected {expected}, found {found}")]
    WrongPem { option: &'static str, path: PathBuf, expected: &'static str, found: String },
    #[error("pub-key {path}: not a public key: {source}")]
    NotPublicKey { path: PathBuf, source: x509_parser::error::X509Error },
    #[error(
        "pub-key {path}: an EC key of {bits} bits does not suit {alg:?} (P-256 for ES256, P-384 for ES384)"
    )]
    WrongCurve { path: PathBuf, bits: usize, alg: Algorithm },
    #[error("pub-key {path}: not a key for {alg:?}")]
    WrongPublicKey { path: PathBuf, alg: Algorithm },
    #[error("priv-key {path}: not a usable RSA private key (2048 to 4096 bits): {source}")]
    BadRsaKey { path: PathBuf, source: ring::error::KeyRejected },
    #[error("priv-key {path}: {source}")]
    RsaSigningKey { path: PathBuf, source: jsonwebtoken::errors::Error },
    #[error(
        "priv-key {path}: not a usable EC private key for {alg:?} (P-256 for ES256, P-384 for ES384): {source}"
    )]
    BadEcKey { path: PathBuf, alg: Algorithm, source: ring::error::KeyRejected },
    #[error("priv-key {path}: {source}")]
    CannotSign { path: PathBuf, source: IssueError },
    #[error("priv-key {path}: cannot verify its own token")]
    CannotVerify { path: PathBuf },
    #[error("pub-key {public} does not match priv-key {private}")]
    Mismatch { public: PathBuf, private: PathBuf },
}

/// The kind of key a sign method needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Rsa,
    Ecdsa,
    Hmac,
}

fn sign_method(name: &str) -> Result<(Algorithm, Family), JwtError> {
    let alg = match name {
        "RS256" => (Algorithm::RS256, Family::Rsa),
        "RS384" => (Algorithm::RS384, Family::Rsa),
        "RS512" => (Algorithm::RS512, Family::Rsa),
        "PS256" => (Algorithm::PS256, Family::Rsa),
        "PS384" => (Algorithm::PS384, Family::Rsa),
        "PS512" => (Algorithm::PS512, Family::Rsa),
        "ES256" => (Algorithm::ES256, Family::Ecdsa),
        "ES384" => (Algorithm::ES384, Family::Ecdsa),
        "HS256" => (Algorithm::HS256, Family::Hmac),
        "HS384" => (Algorithm::HS384, Family::Hmac),
        "HS512" => (Algorithm::HS512, Family::Hmac),
        "ES512" => return Err(JwtError::Es512),
        "" => return Err(JwtError::NoSignMethod),
        other => return Err(JwtError::UnknownSignMethod(other.to_string())),
    };
    Ok(alg)
}

/// A member's JWT keys and settings.
pub struct JwtKeys {
    alg: Algorithm,
    /// None: verify-only (only `pub-key` given).
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    /// Tokens whose signature verified, with their claims: a token is sent with every
    /// request, and checking an RSA or ECDSA signature each time costs tens of microseconds.
    /// Bounded by [`MAX_VERIFIED`]; entries past their `exp` are dropped when found.
    verified: Mutex<HashMap<String, Claims>>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("alg", &self.alg)
            .field("ttl", &self.ttl)
            .field("verify_only", &self.encoding.is_none())
            .finish_non_exhaustive()
    }
}

/// `--auth-token`: `None` for simple tokens, the JWT keys for `jwt,...`. Errors name the
/// option at fault.
pub fn parse_auth_token(spec: &str) -> Result<Option<Arc<JwtKeys>>, AuthTokenError> {
    let mut parts = spec.split(',');
    let kind = parts.next().unwrap_or_default();
    let mut options: Vec<(&str, &str)> = Vec::new();
    for part in parts {
        let pair: Vec<&str> = part.split('=').collect();
        let [key, value] = pair[..] else {
            return Err(AuthTokenError::NotKeyValue(part.to_string()));
        };
        if options.iter().any(|(k, _)| *k == key) {
            return Err(AuthTokenError::Repeated(key.to_string()));
        }
        options.push((key, value));
    }
    match kind {
        "simple" if options.is_empty() => Ok(None),
        "simple" => Err(AuthTokenError::SimpleWithOptions),
        "jwt" => Ok(Some(Arc::new(JwtKeys::from_options(&options)?))),
        "" => Err(AuthTokenError::EmptyType),
        other => Err(AuthTokenError::UnknownType(other.to_string())),
    }
}

fn read_key_file(option: &'static str, path: &str) -> Result<Vec<u8>, JwtError> {
    let read_err = |source| JwtError::Read { option, path: path.into(), source };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(JwtError::TooLarge { option, path: path.into(), len: meta.len() });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    if bytes.is_empty() {
        return Err(JwtError::Empty { option, path: path.into() });
    }
    Ok(bytes)
}

/// The one PEM block of a key file: (label, DER).
fn pem_block(option: &'static str, path: &str, bytes: &[u8]) -> Result<(String, Vec<u8>), JwtError> {
    use x509_parser::error::PEMError;
    let (_, pem) = x509_parser::pem::parse_x509_pem(bytes).map_err(|e| {
        let source = match e {
            x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
            x509_parser::nom::Err::Incomplete(_) => PEMError::IncompletePEM,
        };
        JwtError::NotPem { option, path: path.into(), source }
    })?;
    Ok((pem.label, pem.contents))
}

/// DER tag-length-value (contents below 16 MiB: key files are bounded far below).
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend([0x81, len as u8]);
    } else if len <= 0xffff {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    } else {
        out.extend([0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
    out
}

/// id-ecPublicKey, then the named curve, as DER object identifiers.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// A SEC1 `EC PRIVATE KEY` wrapped as PKCS#8 (RFC 5208 PrivateKeyInfo), which is what ring
/// loads.
fn sec1_to_pkcs8(sec1: &[u8], curve_oid: &[u8]) -> Vec<u8> {
    let mut alg_id = OID_EC_PUBLIC_KEY.to_vec();
    alg_id.extend_from_slice(curve_oid);
    let mut info = vec![0x02, 0x01, 0x00];
    info.extend(der(0x30, &alg_id));
    info.extend(der(0x04, sec1));
    der(0x30, &info)
}

/// The public key of a `pub-key` file as `jsonwebtoken` wants it, checked against `family`.
fn public_key(path: &str, bytes: &[u8], alg: Algorithm, family: Family) -> Result<DecodingKey, JwtError> {
    let (label, der) = pem_block("pub-key", path, bytes)?;
    if family == Family::Rsa && label == "RSA PUBLIC KEY" {
        return Ok(DecodingKey::from_rsa_der(&der));
    }
    if label != "PUBLIC KEY" {
        return Err(JwtError::WrongPem {
            option: "pub-key",
            path: path.into(),
            expected: "a PEM public key (PUBLIC KEY)",
            found: label,
        });
    }
    let not_public = |source| JwtError::NotPublicKey { path: path.into(), source };
    let (_, spki) =
        x509_parser::x509::SubjectPublicKeyInfo::from_der(&der).map_err(|e| not_public(e.into()))?;
    let parsed = spki.parsed().map_err(not_public)?;
    match (family, parsed) {
        // The key bits of an RSA SPKI are the PKCS#1 RSAPublicKey ring verifies with.
        (Family::Rsa, x509_parser::public_key::PublicKey::RSA(_)) => {
            Ok(DecodingKey::from_rsa_der(&spki.subject_public_key.data))
        }
        (Family::Ecdsa, x509_parser::public_key::PublicKey::EC(point)) => {
            let want = if alg == Algorithm::ES256 { 65 } else { 97 };
            if point.data().len() != want {
                return Err(JwtError::WrongCurve { path: path.into(), bits: point.key_size(), alg });
            }
            Ok(DecodingKey::from_ec_der(point.data()))
        }
        _ => Err(JwtError::WrongPublicKey { path: path.into(), alg }),
    }
}

/// The signing key of a `priv-key` file and the public key derived from it.
fn private_key(
    path: &str,
    bytes: &[u8],
    alg: Algorithm,
    family: Family,
) -> Result<(EncodingKey, DecodingKey), JwtError> {
    match family {
        Family::Hmac => Ok((EncodingKey::from_secret(bytes), DecodingKey::from_secret(bytes))),
        Family::Rsa => rsa_private_key(path, bytes),
        Family::Ecdsa => ec_private_key(path, bytes, alg),
    }
}

fn rsa_private_key(path: &str, bytes: &[u8]) -> Result<(EncodingKey, DecodingKey), JwtError> {
    let (label, der) = pem_block("priv-key", path, bytes)?;
    let pair = match label.as_str() {
        "RSA PRIVATE KEY" => rsig::RsaKeyPair::from_der(&der),
        "PRIVATE KEY" => rsig::RsaKeyPair::from_pkcs8(&der),
        _ => {
            return Err(JwtError::WrongPem {
                option: "priv-key",
                path: path.into(),
                expected: "an RSA private key",
                found: label,
            });
        }
    }
    .map_err(|source| JwtError::BadRsaKey { path: path.into(), source })?;
    let encoding = EncodingKey::from_rsa_pem(bytes)
        .map_err(|source| JwtError::RsaSigningKey { path: path.into(), source })?;
    Ok((encoding, DecodingKey::from_rsa_der(pair.public_key().as_ref())))
}

fn ec_private_key(path: &str, bytes: &[u8], alg: Algorithm) -> Result<(EncodingKey, DecodingKey), JwtError> {
    let (label, der) = pem_block("priv-key", path, bytes)?;
    let (signing, curve) = if alg == Algorithm::ES256 {
        (&rsig::ECDSA_P256_SHA256_FIXED_SIGNING, OID_P256)
    } else {
        (&rsig::ECDSA_P384_SHA384_FIXED_SIGNING, OID_P384)
    };
    let pkcs8 = match label.as_str() {
        "EC PRIVATE KEY" => sec1_to_pkcs8(&der, curve),
        "PRIVATE KEY" => der,
        _ => {
            return Err(JwtError::WrongPem {
                option: "priv-key",
                path: path.into(),
                expected: "an EC private key",
                found: label,
            });
        }
    };
    let rng = ring::rand::SystemRandom::new();
    let pair = rsig::EcdsaKeyPair::from_pkcs8(signing, &pkcs8, &rng)
        .map_err(|source| JwtError::BadEcKey { path: path.into(), alg, source })?;
    Ok((EncodingKey::from_ec_der(&pkcs8), DecodingKey::from_ec_der(pair.public_key().as_ref())))
}

impl JwtKeys {
    fn from_options(options: &[(&str, &str)]) -> Result<JwtKeys, JwtError> {
        let get = |name: &str| options.iter().find(|(k, _)| *k == name).map(|(_, v)| *v).unwrap_or("");
        if let Some((unknown, _)) =
            options.iter().find(|(k, _)| !["sign-method", "pub-key", "priv-key", "ttl"].contains(k))
        {
            return Err(JwtError::UnknownOption(unknown.to_string()));
        }
        let (alg, family) = sign_method(get("sign-method"))?;
        let ttl = match get("ttl") {
            "" => DEFAULT_TTL,
            t => crate::member::autocompact::parse_duration(t)
                .ok_or_else(|| JwtError::TtlNotADuration(t.to_string()))?,
        };
        if ttl < Duration::from_secs(1) {
            return Err(JwtError::TtlTooShort(get("ttl").to_string()));
        }
        let (priv_path, pub_path) = (get("priv-key"), get("pub-key"));
        if family == Family::Hmac && !pub_path.is_empty() {
            return Err(JwtError::PubKeyWithSecret(alg));
        }
        let private = match priv_path {
            "" => None,
            p => Some(private_key(p, &read_key_file("priv-key", p)?, alg, family)?),
        };
        let public = match pub_path {
            "" => None,
            p => Some(public_key(p, &read_key_file("pub-key", p)?, alg, family)?),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.validate_aud = false;
        let keys = match (private, public) {
            (None, None) => return Err(JwtError::NoKey),
            (None, Some(decoding)) => {
                JwtKeys { alg, encoding: None, decoding, validation, ttl, verified: Mutex::default() }
            }
            (Some((encoding, derived)), public) => {
                let keys = JwtKeys {
                    alg,
                    encoding: Some(encoding),
                    decoding: derived,
                    validation,
                    ttl,
                    verified: Mutex::default(),
                };
                // The key must sign, and (when given) the public key must verify what it signs.
                let probe = keys
                    .issue("probe", 1)
                    .map_err(|source| JwtError::CannotSign { path: priv_path.into(), source })?;
                keys.verify(&probe).ok_or_else(|| JwtError::CannotVerify { path: priv_path.into() })?;
                match public {
                    Some(decoding) => {
                        let keys = JwtKeys { decoding, verified: Mutex::default(), ..keys };
                        if keys.verify(&probe).is_none() {
                            return Err(JwtError::Mismatch {
                                public: pub_path.into(),
                                private: priv_path.into(),
                            });
                        }
                        keys
                    }
                    None => keys,
                }
            }
        };
        // Nothing verified while checking the keys is kept.
        keys.verified.lock().clear();
        Ok(keys)
    }

    /// A token for `username` issued at auth revision `revision`, expiring `ttl` from now.
    pub fn issue(&self, username: &str, revision: u64) -> Result<String, IssueError> {
        let Some(key) = &self.encoding else { return Err(IssueError::VerifyOnly) };
        let exp = (SystemTime::now() + self.ttl).duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let claims = Claims { exp, revision, username: username.to_string() };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, key).map_err(IssueError::Sign)
    }

    /// The claims of a token signed with this member's key and algorithm and not expired.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        {
            let mut verified = self.verified.lock();
            if let Some(claims) = verified.get(token) {
                // Good through the second `exp` names, as jsonwebtoken (without leeway) and etcd.
                if claims.exp >= now {
                    return Some(claims.clone());
                }
                verified.remove(token);
                return None;
            }
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?.claims;
        let mut verified = self.verified.lock();
        if verified.len() >= MAX_VERIFIED {
            verified.retain(|_, c| c.exp >= now);
            if verified.len() >= MAX_VERIFIED {
                verified.clear();
            }
        }
        verified.insert(token.to_string(), claims.clone());
        Some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write key");
        path.display().to_string()
    }

    fn ec_pair(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
        let pair = rcgen::KeyPair::generate_for(alg).expect("generate");
        (pair.serialize_pem(), pair.public_key_pem())
    }

    #[test]
    fn parses_options_as_etcd_with_clear_errors() {
        assert!(parse_auth_token("simple").expect("simple").is_none());
        let cases = [
            ("", "empty token type"),
            ("token", "unknown token type"),
            ("simple,ttl=5m", "simple takes no options"),
            ("jwt,sign-method", "is not key=value"),
            ("jwt,a=b=c", "is not key=value"),
            ("jwt,ttl=1m,ttl=2m", "given twice"),
            ("jwt,sign-method=RS256,priv_key=x", "unknown option priv_key"),
            ("jwt,priv-key=x", "sign-method is required"),
            ("jwt,sign-method=RS1", "unknown sign-method"),
            ("jwt,sign-method=ES512", "ES512 is not supported"),
            ("jwt,sign-method=RS256,ttl=5 minutes", "is not a duration"),
            ("jwt,sign-method=RS256,ttl=0s", "at least 1s"),
            ("jwt,sign-method=RS256", "no key"),
            ("jwt,sign-method=RS256,priv-key=/nonexistent/key", "cannot read priv-key /nonexistent/key"),
        ];
        for (spec, want) in cases {
            let e = parse_auth_token(spec).expect_err(spec).to_string();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }

    /// Key file problems say which option and which file, and keep the cause.
    #[test]
    fn key_file_errors_name_the_option_and_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("missing.pem");
        let spec = format!("jwt,sign-method=ES256,pub-key={}", missing.display());
        let e = parse_auth_token(&spec).expect_err("missing");
        match &e {
            AuthTokenError::Jwt(JwtError::Read { option: "pub-key", path, source }) => {
                assert_eq!(path, &missing);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("unexpected error {other:?}"),
        }
        let text = e.to_string();
        assert!(text.starts_with("--auth-token jwt: cannot read pub-key "), "{text}");
        assert!(text.contains("missing.pem"), "{text}");
        let empty = write(dir.path(), "empty.pem", "");
        let e = parse_auth_token(&format!("jwt,sign-method=RS256,priv-key={empty}")).expect_err("empty");
        assert!(matches!(&e, AuthTokenError::Jwt(JwtError::Empty { option: "priv-key", .. })), "{e:?}");
        assert!(e.to_string().ends_with("empty.pem is empty"), "{e}");
        let junk = write(dir.path(), "junk.pem", "not a key");
        let e = parse_auth_token(&format!("jwt,sign-method=ES256,priv-key={junk}")).expect_err("junk");
        assert!(matches!(&e, AuthTokenError::Jwt(JwtError::NotPem { option: "priv-key", .. })), "{e:?}");
        assert!(e.to_string().contains("junk.pem is not a PEM file: "), "{e}");
        let e = parse_auth_token("jwt,sign-method=HS1").expect_err("method");
        assert!(matches!(&e, AuthTokenError::Jwt(JwtError::UnknownSignMethod(m)) if m == "HS1"), "{e:?}");
    }

    #[test]
    fn ecdsa_keys_issue_verify_and_refuse_others() {
        let dir = tempfile::tempdir().expect("dir");
        let (private, public) = ec_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (other_private, other_public) = ec_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (p384_private, _) = ec_pair(&rcgen::PKCS_ECDSA_P384_SHA384);
        let (priv_path, pub_path) = (write(dir.path(), "k", &private), write(dir.path(), "k.pub", &public));
        let other_pub = write(dir.path(), "o.pub", &other_public);
        let spec = format!("jwt,sign-method=ES256,priv-key={priv_path},pub-key={pub_path},ttl=10m");
        let keys = parse_auth_token(&spec).expect("parse").expect("jwt");
        let token = keys.issue("alice", 7).expect("issue");
        let claims = keys.verify(&token).expect("verifies");
        assert_eq!((claims.username.as_str(), claims.revision), ("alice", 7));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        assert!((now + 599..=now + 600).contains(&claims.exp), "exp {} now {now}", claims.exp);

        // Another key's tokens, tampered tokens, other algorithms and oversized tokens fail.
        let other = parse_auth_token(&format!(
            "jwt,sign-method=ES256,priv-key={}",
            write(dir.path(), "o", &other_private)
        ))
        .expect("parse")
        .expect("jwt");
        assert!(keys.verify(&other.issue("alice", 7).expect("issue")).is_none());
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let root = Claims { username: "root".into(), ..claims.clone() };
        parts[1] =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &root, &EncodingKey::from_secret(b"k"))
                .expect("encode")
                .split('.')
                .nth(1)
                .expect("claims part")
                .to_string();
        assert!(keys.verify(&parts.join(".")).is_none(), "tampered claims");
        assert!(keys.verify(&format!("{token}x")).is_none());
        assert!(keys.verify("garbage").is_none());
        assert!(keys.verify(&"a".repeat(MAX_TOKEN_BYTES + 1)).is_none());

        // Key problems are startup errors.
        let mismatch = format!("jwt,sign-method=ES256,priv-key={priv_path},pub-key={other_pub}");
        assert!(parse_auth_token(&mismatch).expect_err("mismatch").to_string().contains("does not match"));
        let wrong_curve =
            format!("jwt,sign-method=ES256,priv-key={}", write(dir.path(), "p384", &p384_private));
        assert!(
            parse_auth_token(&wrong_curve)
                .expect_err("curve")
                .to_string()
                .contains("not a usable EC private key")
        );
        let rsa_for_ec = format!("jwt,sign-method=RS256,priv-key={priv_path}");
        assert!(
            parse_auth_token(&rsa_for_ec)
                .expect_err("family")
                .to_string()
                .contains("not a usable RSA private key")
        );
        let pub_as_priv = format!("jwt,sign-method=ES256,priv-key={pub_path}");
        assert!(parse_auth_token(&pub_as_priv).expect_err("label").to_string().contains("found PUBLIC KEY"));
        let not_pem = format!("jwt,sign-method=ES256,priv-key={}", write(dir.path(), "junk", "junk"));
        assert!(parse_auth_token(&not_pem).expect_err("pem").to_string().contains("not a PEM file"));

        // Verify-only: checks tokens, issues none.
        let verify_only = parse_auth_token(&format!("jwt,sign-method=ES256,pub-key={pub_path}"))
            .expect("parse")
            .expect("jwt");
        assert_eq!(verify_only.verify(&token), Some(claims));
        assert!(matches!(verify_only.issue("alice", 1), Err(IssueError::VerifyOnly)));
    }

    /// Runs `openssl` in `dir`; false (loudly) when it is not installed.
    fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
        match std::process::Command::new("openssl").current_dir(dir).args(args).status() {
            Ok(s) => {
                assert!(s.success(), "openssl {args:?} failed");
                true
            }
            Err(e) => {
                eprintln!("!!!!! no openssl ({e}): SKIPPING the RSA key checks !!!!!");
                false
            }
        }
    }

    #[test]
    fn rsa_keys_in_pkcs1_and_pkcs8_with_every_rsa_method() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        if !openssl(d, &["genrsa", "-out", "k8.pem", "2048"]) {
            return;
        }
        openssl(d, &["rsa", "-in", "k8.pem", "-pubout", "-out", "k8.pub"]);
        openssl(d, &["rsa", "-in", "k8.pem", "-traditional", "-out", "k1.pem"]);
        openssl(d, &["rsa", "-in", "k8.pem", "-RSAPublicKey_out", "-out", "k1.pub"]);
        openssl(d, &["genrsa", "-out", "small.pem", "1024"]);
        let p = |f: &str| d.join(f).display().to_string();
        for method in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
            for (private, public) in [("k8.pem", "k8.pub"), ("k1.pem", "k1.pub"), ("k1.pem", "k8.pub")] {
                let spec = format!("jwt,sign-method={method},priv-key={},pub-key={}", p(private), p(public));
                let keys = parse_auth_token(&spec).unwrap_or_else(|e| panic!("{spec}: {e}")).expect("jwt");
                let token = keys.issue("u", 3).expect("issue");
                assert_eq!(keys.verify(&token).map(|c| c.revision), Some(3), "{spec}");
                // Verify-only with either public key form.
                let spec = format!("jwt,sign-method={method},pub-key={}", p(public));
                let verifier = parse_auth_token(&spec).expect("parse").expect("jwt");
                assert!(verifier.verify(&token).is_some(), "{spec}");
            }
        }
        let small = format!("jwt,sign-method=RS256,priv-key={}", p("small.pem"));
        assert!(parse_auth_token(&small).expect_err("1024 bits").to_string().contains("2048 to 4096 bits"));
        // An RS256 token is no PS256 token.
        let rs = parse_auth_token(&format!("jwt,sign-method=RS256,priv-key={}", p("k8.pem")))
            .expect("p")
            .expect("j");
        let ps = parse_auth_token(&format!("jwt,sign-method=PS256,priv-key={}", p("k8.pem")))
            .expect("p")
            .expect("j");
        assert!(ps.verify(&rs.issue("u", 1).expect("issue")).is_none());
    }

    #[test]
    fn hmac_secret_and_expiry() {
        let dir = tempfile::tempdir().expect("dir");
        let secret = write(dir.path(), "secret", "a shared secret\n");
        let keys = parse_auth_token(&format!("jwt,sign-method=HS256,priv-key={secret},ttl=1s"))
            .expect("parse")
            .expect("jwt");
        let token = keys.issue("u", 2).expect("issue");
        assert_eq!(keys.verify(&token).map(|c| c.revision), Some(2));
        // HS384 with the same secret is another algorithm: refused.
        let hs384 = parse_auth_token(&format!("jwt,sign-method=HS384,priv-key={secret}"))
            .expect("parse")
            .expect("jwt");
        assert!(hs384.verify(&token).is_none());
        assert_eq!(keys.verified.lock().len(), 1, "remembered");
        // exp is in whole seconds: at most 2 s after issue the token is void, remembered or not.
        std::thread::sleep(Duration::from_millis(2100));
        assert!(keys.verify(&token).is_none(), "expired");
        assert!(keys.verified.lock().is_empty(), "forgotten");
        // Past the bound, expired entries go first, then all.
        let good = parse_auth_token(&format!("jwt,sign-method=HS256,priv-key={secret},ttl=1h"))
            .expect("parse")
            .expect("jwt");
        for i in 0..=MAX_VERIFIED {
            assert!(good.verify(&good.issue(&format!("u{i}"), 1).expect("issue")).is_some());
        }
        assert!(good.verified.lock().len() <= MAX_VERIFIED);
        let with_pub = format!("jwt,sign-method=HS256,priv-key={secret},pub-key={secret}");
        assert!(parse_auth_token(&with_pub).expect_err("pub").to_string().contains("pub-key is not used"));
    }

    #[test]
    fn sec1_keys_load_like_pkcs8() {
        // rcgen writes PKCS#8; its inner ECPrivateKey (SEC1) is what openssl's
        // `ecparam -genkey` writes, so unwrap it and load it as `EC PRIVATE KEY`.
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate");
        let pkcs8 = pair.serialize_der();
        // PrivateKeyInfo: SEQUENCE { INTEGER 0, AlgorithmIdentifier, OCTET STRING sec1 }.
        let (_, info) = x509_parser::der_parser::parse_der(&pkcs8).expect("der");
        let items = info.as_sequence().expect("sequence");
        let sec1 = items[2].as_slice().expect("octet string").to_vec();
        assert_eq!(sec1_to_pkcs8(&sec1, OID_P256), pkcs8, "the wrapping is rcgen's own encoding");
        let dir = tempfile::tempdir().expect("dir");
        let path = write(dir.path(), "sec1", &pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1)));
        let keys =
            parse_auth_token(&format!("jwt,sign-method=ES256,priv-key={path}")).expect("parse").expect("jwt");
        assert!(keys.verify(&keys.issue("u", 1).expect("issue")).is_some());
    }
}
