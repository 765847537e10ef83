//! A member's certificate close to expiry (or expired) is logged clearly when it is loaded:
//! at start and whenever a renewed file is picked up ([`crate::tls`]).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// A certificate expiring sooner than this is reported with a warning.
const SOON_SECS: i64 = 30 * 24 * 3600;

/// How a certificate's validity ends, seen from `now` (seconds since the epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Valid for more than 30 days.
    Later,
    /// Expires within 30 days: seconds left.
    Soon(i64),
    /// Expired this many seconds ago.
    Expired(i64),
}

/// The expiry of a DER certificate at `now`; `None` if it cannot be parsed (rustls decides
/// whether it is usable).
pub fn expiry(der: &[u8], now: i64) -> Option<(Expiry, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let not_after = cert.validity().not_after.timestamp();
    let left = not_after - now;
    let e = if left < 0 {
        Expiry::Expired(-left)
    } else if left < SOON_SECS {
        Expiry::Soon(left)
    } else {
        Expiry::Later
    };
    Some((e, not_after))
}

/// Logs the leaf certificate of `path` if it expires within 30 days or has expired.
pub fn report(path: &Path, der: &[u8]) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    match expiry(der, now) {
        Some((Expiry::Expired(ago), not_after)) => tracing::error!(
            cert = %path.display(),
            not_after,
            "the certificate EXPIRED {} days ago: peers and clients will refuse it; renew it (it is picked up without a restart)",
            ago / 86_400
        ),
        Some((Expiry::Soon(left), not_after)) => tracing::warn!(
            cert = %path.display(),
            not_after,
            "the certificate expires in {} days {} hours: renew it (it is picked up without a restart)",
            left / 86_400,
            (left % 86_400) / 3600
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn expired_soon_and_later() {
        // 2030-01-01T00:00:00Z
        let t2030 = 1_893_456_000;
        let der = cert((2030, 1, 1));
        assert_eq!(expiry(&der, t2030 + 86_400).map(|e| e.0), Some(Expiry::Expired(86_400)));
        assert_eq!(expiry(&der, t2030 - 3600).map(|e| e.0), Some(Expiry::Soon(3600)));
        assert_eq!(expiry(&der, t2030 - 60 * 86_400).map(|e| e.0), Some(Expiry::Later));
        assert_eq!(expiry(b"not a certificate", 0), None);
    }
}
